"""The weight analyses (scalpel.analysis.weights, one parquet per job) gathered into tidy tables, and their model means.

Tables, in results/tables/
- `weights_update.tsv`, `weights_spectral.tsv`: one row per run, step, layer, module, with the run's method, the
  checkpoint's % of training and its `reference` (what the update is taken from: `base` or `<run>@<step>`);
- `weights_means.tsv`: one row per checkpoint, the model means of both (`summarize`); spectral columns are empty
  for checkpoints the spectral pass skipped (config `weights.spectral`);
- `weights_align.tsv` (per matrix) and `weights_align_means.tsv` (per pair of checkpoints): cosine and Jaccard,
  with each run's reference (`reference_a`, `reference_b`), from which its update is taken.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from pandas.api.types import is_numeric_dtype

from scalpel.io import read_yaml, write_tsv
from scalpel.report.tables import _in_order, _known, final_step, reference

KEYS = ["run", "step"]
ALIGN_KEYS = ["run_a", "step_a", "run_b", "step_b", "reference_a", "reference_b"]


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


_POOLED = {  # column: (the summed columns it needs, its value from their sums s)
    "unchanged_bitwise": (("n_equal", "n"), lambda s: s["n_equal"] / s["n"]),
    "unchanged_tol": (("n_updated", "n"), lambda s: 1 - s["n_updated"] / s["n"]),
    "overlap_top": (("top_hits", "n_updated"), lambda s: _ratio(s["top_hits"], s["n_updated"])),
    "overlap_bottom": (("bottom_hits", "n_updated"), lambda s: _ratio(s["bottom_hits"], s["n_updated"])),
    "rel_update": (("delta_sq", "base_sq"), lambda s: math.sqrt(_ratio(s["delta_sq"], s["base_sq"]))),
    "cosine": (("dot", "delta_sq_a", "delta_sq_b"),
               lambda s: _ratio(s["dot"], math.sqrt(s["delta_sq_a"] * s["delta_sq_b"]))),
    "updated_a": (("n_updated_a", "n"), lambda s: s["n_updated_a"] / s["n"]),
    "updated_b": (("n_updated_b", "n"), lambda s: s["n_updated_b"] / s["n"]),
    "jaccard": (("n_updated_both", "n_updated_a", "n_updated_b"),
                lambda s: _ratio(s["n_updated_both"], s["n_updated_a"] + s["n_updated_b"] - s["n_updated_both"])),
}


def summarize(df: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Model means (one row, or one per `by` group) of any of the three tables, with the number of matrices.

    Counts and norms are pooled over all elements, i.e. the metric of the model as one vector: unchanged_*,
    overlap_*, rel_update, cosine, updated_*, jaccard; jaccard_random keeps each matrix's densities
    (sum of n p q over sum of n (p + q - p q)). The rest (nss, ranks, angles) is the mean over matrices, NaN
    (frozen matrices) skipped."""
    by = list(by)
    pooled_raw = {c for cols, _ in _POOLED.values() for c in cols} | {"n"}
    rows = []
    for key, group in (df.groupby(by, sort=False) if by else [((), df)]):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["matrices"] = len(group)
        for col, (needs, formula) in _POOLED.items():
            if col in group and all(c in group for c in needs):
                row[col] = formula(group[list(needs)].sum())
        if "overlap_random" in group:
            row["overlap_random"] = float(group["overlap_random"].iloc[0])
        if "jaccard_random" in group:
            a, b, n = group["n_updated_a"], group["n_updated_b"], group["n"]
            union = (a + b - a * b / n).sum()
            row["jaccard_random"] = float((a * b / n).sum() / union) if union else math.nan
        for col in group.columns:
            if col not in row and col not in pooled_raw and col != "layer" and is_numeric_dtype(group[col]):
                row[col] = float(group[col].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _read(files) -> pd.DataFrame:
    frames = [pd.read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _with_progress(df: pd.DataFrame, runs: dict, where: str) -> pd.DataFrame:
    """The run's method, the checkpoint's % of training and its reference after run, step; in spec order."""
    if df.empty:
        return pd.DataFrame(columns=["run", "method", "step", "pct_training", "reference", "layer", "module"])
    _known(runs, df.run, where)
    df = df.drop(columns="reference", errors="ignore")
    df.insert(1, "method", df.run.map(lambda r: runs[r]["method"]))
    df.insert(3, "pct_training", 100.0 * df.step / df.run.map(lambda r: final_step(runs, r)))
    df.insert(4, "reference", df.run.map(lambda r: reference(runs, r)))
    by = [c for c in ("run", "step", "layer", "module") if c in df]
    return _in_order(df, by, runs)


def model_means(update: pd.DataFrame, spectral: pd.DataFrame, runs: dict) -> pd.DataFrame:
    """One row per checkpoint: the update table's model means, then the spectral ones where that pass ran."""
    raw = update.drop(columns=["method", "pct_training", "reference"])
    means = summarize(raw, by=KEYS)
    if not spectral.empty:
        spec = summarize(spectral.drop(columns=["method", "pct_training", "reference"]), by=KEYS).drop(
            columns="matrices")
        means = means.merge(spec, on=KEYS, how="left")
    return _with_progress(means, runs, "weights update tables")


def align_means(align: pd.DataFrame) -> pd.DataFrame:
    return summarize(align, by=ALIGN_KEYS) if not align.empty else pd.DataFrame(columns=ALIGN_KEYS)


def write_tables(update_files, spectral_files, align_files, runs: dict, outdir) -> dict[str, pd.DataFrame]:
    out = Path(outdir)
    update = _with_progress(_read(update_files), runs, "weights update parquets")
    spectral = _with_progress(_read(spectral_files), runs, "weights spectral parquets")
    align = _read(align_files)
    if align.empty:
        align = pd.DataFrame(columns=[*ALIGN_KEYS, "layer", "module", "cosine", "jaccard", "jaccard_random"])
    else:
        _known(runs, set(align.run_a) | set(align.run_b), "weights align parquets")
        align.insert(4, "reference_a", align.run_a.map(lambda r: reference(runs, r)))
        align.insert(5, "reference_b", align.run_b.map(lambda r: reference(runs, r)))
    tables = {"weights_update": update, "weights_spectral": spectral,
              "weights_means": model_means(update, spectral, runs), "weights_align": align,
              "weights_align_means": align_means(align)}
    for name, df in tables.items():
        write_tsv(df, out / f"{name}.tsv")
    return tables


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("weight-tables", help="gather the weight analyses into tables",
                               description="Gather `scalpel weights` parquets into tidy tables and model means.")
    ap.add_argument("--update", nargs="+", required=True, help="parquets of `weights update`")
    ap.add_argument("--spectral", nargs="*", default=[], help="parquets of `weights spectral`")
    ap.add_argument("--align", nargs="*", default=[], help="parquets of `weights align`")
    ap.add_argument("--spec", required=True, help="the analysis spec (rule analysis_spec)")
    ap.add_argument("--outdir", required=True)
    ap.set_defaults(func=main)


def main(args) -> None:
    write_tables(args.update, args.spectral, args.align, read_yaml(args.spec)["runs"], args.outdir)

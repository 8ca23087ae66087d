"""Gather eval scores and weight diffs into the tidy tables the figures and the report read."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from scalpel import io
from scalpel.analysis.matrices import MODULES
from scalpel.config import BASE, reference_label
from scalpel.eval import evaluate
from scalpel.io import read_yaml, write_tsv
from scalpel.report import intervals
from scalpel.report.authors import compare

# Names that must stay strings even when they look like numbers (a run called "1e-5").
_TEXT = {"run": str, "task": str, "metric": str, "module": str, "method": str, "numerator": str, "denominator": str,
         "vs_run": str, "comparison": str, "interval": str, "group": str, "quantity": str}


def read_tsv(path) -> pd.DataFrame:
    return io.read_tsv(path, dtype=_TEXT)


def final_step(runs: dict, run: str) -> int:
    return max(runs[run]["checkpoint_steps"])


def reference(runs: dict, run: str) -> str:
    """What the run's checkpoints were compared with (config runs.<name>.reference): `base`, or `<run>@<step>`,
    another run's final checkpoint."""
    return reference_label(runs, run)


def _known(runs: dict, names, where: str) -> None:
    unknown = sorted(set(names) - set(runs))
    if unknown:
        raise ValueError(f"{where}: runs {unknown} are not in the spec (runs: {', '.join(runs)})")


def _in_order(df: pd.DataFrame, by: list[str], runs=None) -> pd.DataFrame:
    """Sort by `by`, with modules in MODULES order and runs in spec order (when `runs` is given)."""
    order = {"module": list(MODULES), "run": list(runs or ())}
    return df.sort_values(by, ignore_index=True,
                          key=lambda col: col.map(order[col.name].index) if order.get(col.name) else col)


def scores_table(eval_files, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every score of every evaluated model; with `items` (intervals.load_items), each with its 95% interval."""
    frames = [read_tsv(f) for f in eval_files]
    if not frames:
        return pd.DataFrame(columns=evaluate.COLUMNS)
    scores = pd.concat(frames, ignore_index=True)
    missing = set(evaluate.COLUMNS) - set(scores.columns)
    if missing:
        raise ValueError(f"eval tables lack columns {sorted(missing)}")
    scores = scores[evaluate.COLUMNS].sort_values(["run", "step", "task", "metric"], ignore_index=True)
    return scores if items is None else intervals.score_intervals(scores, items)


def updates_table(diff_files, runs: dict) -> pd.DataFrame:
    """All diff parquets, with each run's method and how far through its training the checkpoint is."""
    updates = pd.concat([pd.read_parquet(f) for f in diff_files], ignore_index=True)
    _known(runs, updates.run, "diff tables")
    updates.insert(2, "method", updates.run.map(lambda r: runs[r]["method"]))
    updates.insert(3, "pct_training", 100.0 * updates.step / updates.run.map(lambda r: final_step(runs, r)))
    updates["reference"] = updates.run.map(lambda r: reference(runs, r))
    return _in_order(updates, ["run", "step", "layer", "module"], runs)


def kl_table(kl_files, runs: dict) -> pd.DataFrame:
    """KL(reference || checkpoint) per checkpoint, the reference being the base unless the run names another (column
    `reference`): `kl_per_token` (mean over an example's positions, then over examples: the authors' unit) and
    `kl_per_sequence_ours` (summed over positions, then averaged: ours only)."""
    rows = [json.loads(Path(f).read_text()) for f in kl_files]
    kl = pd.DataFrame([{"run": r["run"], "step": r["step"], "kl_per_token": r["mean_kl"],
                        "kl_per_sequence_ours": r["mean_seq_kl"], "n_examples": r["n_examples"]} for r in rows])
    _known(runs, kl.run, "KL files")
    kl.insert(2, "method", kl.run.map(lambda r: runs[r]["method"]))
    kl.insert(3, "pct_training", 100.0 * kl.step / kl.run.map(lambda r: final_step(runs, r)))
    kl["reference"] = kl.run.map(lambda r: reference(runs, r))
    return _in_order(kl, ["run", "step"], runs)


def module_means(updates: pd.DataFrame) -> pd.DataFrame:
    """Mean rel_update over layers, per run x checkpoint x module."""
    keys = ["run", "method", "step", "pct_training", "module"]
    means = updates.groupby(keys, as_index=False, sort=False).rel_update.mean()
    runs_seen = list(dict.fromkeys(updates.run))
    return _in_order(means.rename(columns={"rel_update": "mean_rel_update"}), ["run", "step", "module"], runs_seen)


def with_sweeps(frame: pd.DataFrame, runs: dict, after: str = "step") -> pd.DataFrame:
    """`frame` (a `run` column) with, where any run is swept (config runs.<name>.sweep), `sweep` (the configured run)
    and one column per swept key (its value; empty for runs that do not sweep it and the base), after `after`; as is
    otherwise. Figures can then use the swept values as axes."""
    keys = list(dict.fromkeys(k for spec in runs.values() for k in (spec.get("swept") or {})))
    if not keys:
        return frame
    clash = [k for k in ["sweep", *keys] if k in frame.columns]
    if clash:
        raise ValueError(f"swept key {clash[0]!r} is already a column of the table")
    out = frame.copy()
    at = out.columns.get_loc(after) + 1
    out.insert(at, "sweep", out.run.map(lambda r: runs[r].get("sweep_of", r) if r in runs else r))
    for i, key in enumerate(keys, start=1):
        out.insert(at + i, key, out.run.map(lambda r, k=key: (runs.get(r, {}).get("swept") or {}).get(k)))
    return out


def _one_row(scores: pd.DataFrame, run: str, step: int, task: str, metric: str):
    hit = scores[(scores.run == run) & (scores.step == step) & (scores.task == task) & (scores.metric == metric)]
    if len(hit) != 1:
        raise ValueError(f"{len(hit)} scores for run={run} step={step} task={task} metric={metric}, expected 1")
    return hit.iloc[0]


def summary(scores: pd.DataFrame, updates: pd.DataFrame, runs: dict, primary: dict,
            differences: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model (base, then each run's final checkpoint): primary score per task (with <task>_low and
    <task>_high when `scores` has intervals), mean rel_update, and, from `differences`, the in-domain and
    out-of-domain means and their change from the base with its interval and significance (Benjamini-Hochberg)."""
    rows = []
    for run, method, step in [(BASE, BASE, 0)] + [(r, spec["method"], final_step(runs, r)) for r, spec in runs.items()]:
        row = {"run": run, "method": method, "step": step}
        for task, metric in primary.items():
            hit = _one_row(scores, run, step, task, metric)
            row[task] = float(hit.value)
            if "ci_low" in scores:
                row[f"{task}_low"], row[f"{task}_high"] = float(hit.ci_low), float(hit.ci_high)
        row.update(_domain_columns(differences, run, step))
        if run == BASE:
            row["mean_rel_update"] = float("nan")
        else:
            final = updates[(updates.run == run) & (updates.step == step)]
            if final.empty:
                raise ValueError(f"no weight diff for run={run} at its final step {step}")
            row["mean_rel_update"] = float(final.rel_update.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _domain_columns(differences: pd.DataFrame | None, run: str, step: int) -> dict:
    if differences is None or differences.empty:
        return {}
    out = {}
    for domain, label in intervals.DOMAINS.items():
        vs_base = differences[(differences.comparison == "vs base") & (differences.task == label)]
        if vs_base.empty:
            continue
        out[domain] = float(vs_base.mean_b.iloc[0])
        hit = vs_base[(vs_base.run == run) & (vs_base.step == step)]
        if run != BASE and len(hit) == 1:
            h = hit.iloc[0]
            out.update({domain: float(h.mean_a), f"{domain}_delta": float(h["diff"]), f"{domain}_delta_low": h.low,
                        f"{domain}_delta_high": h.high, f"{domain}_delta_significant": bool(h.significant_bh)})
    return out


def ratios(summary: pd.DataFrame, runs: dict) -> pd.DataFrame:
    """How many times more an SFT run moved the weights than a GRPO run, at final checkpoints (every pair)."""
    mean = summary.set_index("run").mean_rel_update
    by_method = {m: [r for r, spec in runs.items() if spec["method"] == m] for m in ("sft", "grpo")}
    rows = [{"numerator": s, "denominator": g, "ratio": float(mean[s] / mean[g])}
            for s in by_method["sft"] for g in by_method["grpo"]]
    return pd.DataFrame(rows, columns=["numerator", "denominator", "ratio"])


def seed_bounds(primary: dict) -> dict:
    """The range of each summary quantity: scores and domain means (every primary metric is a fraction) in [0, 1],
    their changes in [-1, 1], relative updates >= 0."""
    return {**{c: (0.0, 1.0) for c in [*primary, *intervals.DOMAINS]},
            **{f"{d}_delta": (-1.0, 1.0) for d in intervals.DOMAINS}, "mean_rel_update": (0.0, float("inf"))}


def seeded_mapping(mapping: dict, runs: dict) -> dict:
    """report.authors with a run repeated over seeds mapped seed by seed (its runs keep the configured name as
    `group`)."""
    named = mapping.get("runs", {})
    return {**mapping, "runs": {run: named[spec.get("group", run)] for run, spec in runs.items()
                                if spec.get("group", run) in named}}


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("tables", help="aggregate evals and diffs into tables",
                               description="Aggregate eval TSVs and weight-diff parquets into tidy tables.")
    ap.add_argument("--eval", nargs="+", required=True, help="eval TSVs (run, step, task, metric, value, stderr)")
    ap.add_argument("--diff", nargs="+", required=True, help="diff parquets from scalpel.analysis.diff")
    ap.add_argument("--kl", nargs="*", default=[], help="KL JSONs from scalpel.analysis.kl")
    ap.add_argument("--authors", default=None, help="the authors' numbers (workflow/report/authors.yaml)")
    add_spec_and_outdir(ap)
    ap.set_defaults(func=main)


def add_spec_and_outdir(ap) -> None:
    """The arguments tables and plots share: the analysis spec (rule analysis_spec) and the output folder."""
    ap.add_argument("--spec", required=True,
                    help="YAML with runs: {name: {method, checkpoint_steps}}, primary: {task: metric}")
    ap.add_argument("--outdir", required=True)


def main(args) -> None:
    spec = read_yaml(args.spec)
    runs, primary = spec["runs"], spec["primary"]

    items = intervals.load_items(args.eval)
    scores = scores_table(args.eval, items)
    domains = {key: spec.get(key, []) for key in intervals.DOMAINS}
    differences = intervals.differences(items, runs, primary, domains)
    updates = updates_table(args.diff, runs)
    table = summary(scores, updates, runs, primary, differences)
    out = Path(args.outdir)
    write_tsv(scores, out / "scores.tsv")
    write_tsv(differences, out / "differences.tsv")
    write_tsv(intervals.pass_at_k_table(items, runs), out / "pass_at_k.tsv")
    write_tsv(intervals.seed_table(table, runs, [c for c in table.columns if c not in ("run", "method", "step")],
                                   seed_bounds(primary)), out / "seeds.tsv")
    write_tsv(updates, out / "updates.tsv")
    means = module_means(updates)
    write_tsv(means, out / "update_module_means.tsv")
    write_tsv(with_sweeps(table, runs), out / "summary.tsv")
    write_tsv(ratios(table, runs), out / "ratios.tsv")
    kl = kl_table(args.kl, runs) if args.kl else None
    if kl is not None:
        write_tsv(kl, out / "kl.tsv")
    if args.authors:
        final_steps = {BASE: 0, **{run: final_step(runs, run) for run in runs}}
        methods = {run: spec["method"] for run, spec in runs.items()}
        authors = read_yaml(args.authors)
        write_tsv(compare(authors, seeded_mapping(spec.get("authors", {}), runs), final_steps, scores, means, kl,
                          methods),
                  out / "authors_comparison.tsv")

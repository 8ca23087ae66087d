"""What predicts forgetting: across every checkpoint of every run, the out-of-domain change against the per-token
forward KL and against each weight measure's model mean, one least-squares line per predictor.

- `ood_change`: the mean over the out-of-domain tasks (analysis spec `out_of_domain`) of each task's primary metric
  (spec `primary`), checkpoint minus base: negative is forgetting. Intermediate checkpoints lack the suites of
  `eval.final_only`; only checkpoints with every out-of-domain task are used, and the table says how many;
- predictors: `kl_per_token` (results/tables/kl.tsv: KL(base || checkpoint) on the in-domain reference set) and the
  columns of results/tables/weights_means.tsv (spectral ones exist only where the spectral pass ran, so their n is
  smaller);
- `r2`: R^2 of the least-squares line y = a + b x (the squared Pearson correlation), with a percentile bootstrap
  interval that resamples runs, not checkpoints: the checkpoints of one run share its training and are not
  independent, so a run is drawn with all its checkpoints (a cluster bootstrap; Davison & Hinkley 1997, sec. 3.8).
  A resample with a constant x or y counts R^2 0 (no line explains anything there). The claim tested: forward KL
  predicts forgetting best (Shenfeld et al. 2025, "RL's Razor", arXiv 2509.04259, R^2 0.96 on a toy task, 0.71 on
  a 3B model);
- pairs (`forgetting_pairs.tsv`, one row per pair of predictors, the higher-ranked first): the difference of their
  R^2 on the checkpoints both have, with the same run-resampling interval, paired (both R^2 from the same resample
  of runs). The difference of R^2 rather than of a rank correlation, because the claim is stated and reported as
  R^2 of a line (Shenfeld et al., fig. 3) and forgetting.tsv ranks by it.
"""
from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd

from scalpel.config import BASE
from scalpel.io import read_yaml, write_tsv
from scalpel.report.tables import read_tsv, with_sweeps

log = logging.getLogger(__name__)

KEYS = ["run", "step"]
WEIGHT_MEASURES = ("unchanged_bitwise", "unchanged_tol", "overlap_top", "overlap_bottom", "rel_update", "nss",
                   "stable_rank", "effective_rank")
_ANGLE = re.compile(r"angle_(left|right)_k\d+")
MIN_POINTS = 3
COLUMNS = ["predictor", "n", "runs", "r2", "r2_low", "r2_high", "slope", "intercept"]
PAIR_COLUMNS = ["predictor_a", "predictor_b", "n", "runs", "r2_a", "r2_b", "diff", "diff_low", "diff_high"]


def ood_change(scores: pd.DataFrame, spec: dict) -> tuple[pd.DataFrame, int]:
    """(run, step, ood_change) of every checkpoint with all out-of-domain tasks, and how many checkpoints lacked
    some. A task without a primary metric in the spec, or the base without it, is an error naming the task."""
    tasks, primary = list(spec.get("out_of_domain") or []), spec["primary"]
    if not tasks:
        raise ValueError("analysis spec: out_of_domain lists no task (eval.in_domain covers every suite)")
    missing = [t for t in tasks if t not in primary]
    if missing:
        raise ValueError(f"analysis spec: out-of-domain task {missing[0]} has no primary metric "
                         "(config eval.primary_metrics)")
    wanted = pd.DataFrame({"task": tasks, "metric": [primary[t] for t in tasks]})
    rows = scores.merge(wanted, on=["task", "metric"])
    base = rows[rows.run == BASE].set_index("task").value
    absent = [t for t in tasks if t not in base.index]
    if absent:
        raise ValueError(f"scores: the base model has no {absent[0]},{primary[absent[0]]} score")
    rows = rows[rows.run != BASE].assign(change=lambda d: d.value - d.task.map(base))
    per_ckpt = rows.groupby(KEYS).agg(n_tasks=("task", "nunique"), ood_change=("change", "mean")).reset_index()
    checkpoints = scores[scores.run != BASE][KEYS].drop_duplicates()
    complete = per_ckpt[per_ckpt.n_tasks == len(tasks)].drop(columns="n_tasks")
    return complete.reset_index(drop=True), len(checkpoints) - len(complete)


def predictors(means: pd.DataFrame) -> list[str]:
    return [c for c in means.columns if c in WEIGHT_MEASURES or _ANGLE.fullmatch(c)]


def r2(x, y) -> float:
    """R^2 of the least-squares line of y on x; 0 when x or y is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    if sxx <= 0 or syy <= 0:
        return 0.0
    return min(1.0, float(xc @ yc) ** 2 / (sxx * syy))  # rounding can pass 1 by an ulp


def resampled_r2(xs, y, clusters=None, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """R^2 of y on each of `xs` in `n_resamples` cluster-bootstrap resamples, shape (n_resamples, len(xs)).

    A resample draws as many clusters (`clusters`: one label per point, the run; None: each point its own) as there
    are, with replacement, each with all its points; every predictor is fitted on the same resample (paired). A
    drawn cluster's points enter with its multiplicity as weight, which is the same fit as repeating them."""
    y = np.asarray(y, dtype=float)
    xs = [np.asarray(x, dtype=float) for x in xs]
    labels = np.arange(len(y)) if clusters is None else pd.factorize(np.asarray(clusters))[0]
    k = labels.max() + 1
    counts = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n_resamples)
    w = counts[:, labels].astype(float)
    w /= w.sum(axis=1, keepdims=True)
    yc = y - y.mean()
    my = w @ yc
    syy = w @ (yc * yc) - my ** 2
    out = np.zeros((n_resamples, len(xs)))
    for j, x in enumerate(xs):
        xc = x - x.mean()
        mx = w @ xc
        sxx, sxy = w @ (xc * xc) - mx ** 2, w @ (xc * yc) - mx * my
        tiny = 1e-12 * max(float(xc @ xc) / len(x), float(yc @ yc) / len(y), np.finfo(float).tiny)
        ok = (sxx > tiny) & (syy > tiny)
        out[ok, j] = np.minimum(1.0, sxy[ok] ** 2 / (sxx[ok] * syy[ok]))
    return out


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def fit(x, y, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95, clusters=None) -> dict:
    """slope, intercept, r2 and its bootstrap interval resampling `clusters` (the run of each point; None: the
    points); NaN with fewer than MIN_POINTS points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    units = len(x) if clusters is None else len(set(clusters))
    out = {"n": len(x), "runs": units, "r2": math.nan, "r2_low": math.nan, "r2_high": math.nan,
           "slope": math.nan, "intercept": math.nan}
    if len(x) < MIN_POINTS:
        return out
    if np.ptp(x) > 0:
        out["slope"], out["intercept"] = (float(v) for v in np.polyfit(x, y, 1))
    out["r2"] = r2(x, y)
    if units >= 2:
        out["r2_low"], out["r2_high"] = _percentile(resampled_r2([x], y, clusters, n_resamples, seed)[:, 0],
                                                    confidence)
    return out


def r2_difference(x_a, x_b, y, clusters=None, n_resamples: int = 2000, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    """R^2(y on x_a) - R^2(y on x_b) on the same points, with a paired percentile bootstrap interval resampling
    `clusters` (the run of each point): both fits on every resample of runs. NaN with fewer than MIN_POINTS points;
    no interval with fewer than 2 clusters."""
    x_a, x_b, y = (np.asarray(v, dtype=float) for v in (x_a, x_b, y))
    units = len(y) if clusters is None else len(set(clusters))
    out = {"n": len(y), "runs": units, "r2_a": math.nan, "r2_b": math.nan, "diff": math.nan,
           "diff_low": math.nan, "diff_high": math.nan}
    if len(y) < MIN_POINTS:
        return out
    out["r2_a"], out["r2_b"] = r2(x_a, y), r2(x_b, y)
    out["diff"] = out["r2_a"] - out["r2_b"]
    if units >= 2:
        both = resampled_r2([x_a, x_b], y, clusters, n_resamples, seed)
        out["diff_low"], out["diff_high"] = _percentile(both[:, 0] - both[:, 1], confidence)
    return out


def points_table(scores: pd.DataFrame, kl: pd.DataFrame, means: pd.DataFrame, spec: dict) -> tuple[pd.DataFrame,
                                                                                                     int]:
    """One row per checkpoint with every out-of-domain task: run, method, step, pct_training, ood_change, then the
    predictors; and the number of checkpoints left out."""
    ood, left_out = ood_change(scores, spec)
    info = means[[*KEYS, "method", "pct_training"]] if not means.empty else kl[[*KEYS, "method", "pct_training"]]
    points = ood.merge(info, on=KEYS, how="left")
    points = points.merge(kl[[*KEYS, "kl_per_token"]], on=KEYS, how="left")
    points = points.merge(means[[*KEYS, *predictors(means)]], on=KEYS, how="left")
    first = [*KEYS, "method", "pct_training", "ood_change"]
    return points[first + [c for c in points.columns if c not in first]], left_out


def _predictor_columns(points: pd.DataFrame) -> list[str]:
    first = points.columns.get_loc("ood_change") + 1
    return [c for c in points.columns[first:] if pd.api.types.is_numeric_dtype(points[c])]


def fit_all(points: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per predictor (COLUMNS), ranked by R^2 (NaN last); intervals resample runs."""
    rows = []
    for col in _predictor_columns(points):
        have = points[["run", col, "ood_change"]].dropna()
        rows.append({"predictor": col, **fit(have[col], have.ood_change, n_resamples, seed, clusters=have.run)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("r2", ascending=False, na_position="last", ignore_index=True)


def pairs_table(points: pd.DataFrame, ranking: list[str], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per pair of predictors (PAIR_COLUMNS), the higher-ranked (in `ranking`) as predictor_a: the
    difference of their R^2 on the checkpoints both have, with a paired interval resampling runs."""
    rows = []
    for i, a in enumerate(ranking):
        for b in ranking[i + 1:]:
            have = points[["run", a, b, "ood_change"]].dropna()
            rows.append({"predictor_a": a, "predictor_b": b,
                         **r2_difference(have[a], have[b], have.ood_change, have.run, n_resamples, seed)})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


KL = "kl_per_token"
RAZOR_MARGIN = 0.10
RAZOR_MIN_POINTS = 20


def kl_differences(pairs: pd.DataFrame, reference: str = KL) -> pd.DataFrame:
    """R^2(reference) - R^2(w) with its interval for every other predictor w (the pair rows read the other way
    round negated): columns predictor, n, diff, diff_low, diff_high."""
    rows = []
    for p in pairs.itertuples(index=False):
        if reference not in (p.predictor_a, p.predictor_b):
            continue
        if p.predictor_a == reference:
            rows.append((p.predictor_b, p.n, p.diff, p.diff_low, p.diff_high))
        else:
            rows.append((p.predictor_a, p.n, -p.diff, -p.diff_high, -p.diff_low))
    return pd.DataFrame(rows, columns=["predictor", "n", "diff", "diff_low", "diff_high"])


def razor_verdict(pairs: pd.DataFrame, points: int, margin: float = RAZOR_MARGIN) -> str:
    """docs/razor-claims.md's rule, fixed before the study ran: reproduced if R^2(KL) - R^2(w) has its interval above
    0 for every weight measure w; not reproduced if for some w it lies below `margin`; inconclusive otherwise, or with
    fewer than RAZOR_MIN_POINTS checkpoints or a difference without an interval."""
    d = kl_differences(pairs)
    d = d[d.predictor.isin(WEIGHT_MEASURES) | d.predictor.str.fullmatch(_ANGLE.pattern)]
    if points < RAZOR_MIN_POINTS or d.empty or d[["diff_low", "diff_high"]].isna().any().any():
        return "inconclusive"
    if (d.diff_low > 0).all():
        return "reproduced"
    if (d.diff_high < margin).any():
        return "not reproduced"
    return "inconclusive"


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("forgetting", help="which measure predicts the out-of-domain drop",
                               description="R^2 of the out-of-domain change against KL and each weight measure.")
    ap.add_argument("--scores", required=True, help="results/tables/scores.tsv")
    ap.add_argument("--kl", required=True, help="results/tables/kl.tsv")
    ap.add_argument("--weights", required=True, help="results/tables/weights_means.tsv")
    ap.add_argument("--spec", required=True, help="the analysis spec (rule analysis_spec)")
    ap.add_argument("--table", required=True, help="TSV to write: one row per predictor, ranked by R^2")
    ap.add_argument("--points", required=True, help="TSV to write: one row per checkpoint used")
    ap.add_argument("--pairs", required=True, help="TSV to write: one row per pair of predictors, R^2 difference")
    ap.add_argument("--figure", required=True, help="PNG to write")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.set_defaults(func=main)


def main(args) -> None:
    from scalpel.report.weight_plots import forgetting_figure

    spec = read_yaml(args.spec)
    points, left_out = points_table(read_tsv(args.scores), read_tsv(args.kl), read_tsv(args.weights), spec)
    log.info("%d checkpoints have every out-of-domain task; %d lack some (eval.final_only) and are left out",
             len(points), left_out)
    table = fit_all(points, args.resamples, args.seed)
    table.insert(2, "checkpoints_left_out", left_out)
    pairs = pairs_table(points, list(table.predictor), args.resamples, args.seed)
    write_tsv(with_sweeps(points, spec.get("runs", {})), args.points)
    write_tsv(table, args.table)
    write_tsv(pairs, args.pairs)
    log.info("RL's Razor (docs/razor-claims.md), KL better than each weight measure: %s",
             razor_verdict(pairs, len(points)))
    forgetting_figure(points, table, left_out, args.figure, pairs)

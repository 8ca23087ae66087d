"""Confidence intervals for eval scores and for differences between models; pass@k; summaries over seeds.

Scores follow Miller 2024, "Adding Error Bars to Evals" (arXiv 2411.00640): eval items are a sample from a larger
population of items. An item's score is the mean over its samples. The standard error of a task score is the standard
error of the mean of the item scores. It is cluster-robust when items share a subject or prompt (MMLU subjects,
MMLU-Pro categories, the instructions of one IFEval prompt). Two models scored on the same items are compared through
the paired differences d_i = a_i - b_i. With K samples per item, Var(score) = (Var(x) + E[sigma_i^2] / K) / n, where
x_i is item i's expected score and sigma_i^2 the variance of one sample of item i. The sample variance of the item
means already estimates that sum, so the SE needs no special case for K; `score_interval` also reports the two parts,
and `stderr_with_samples` predicts the SE at another K from them.
pass@k is the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1 and its numerically stable product).

Input forms (every function): scores as a 1-D array (one per item), a 2-D array (items x samples), or a long 1-D
array together with `items` (the item id of each row; the rows of one item are its samples). `clusters` and
`weights` line up with the rows of `scores`; in the long form they must be the same on every row of an item.
`weights` turn the score into a weighted mean of item scores. For an unweighted mean over MMLU's subjects (lm-eval's
`weight_by_size: false`), pass `macro_weights(subjects)` and cluster by subject.

Which interval tables should show (`interval="auto"`, the default of `score_interval`):
- Wilson's score interval for 0/1 items with one sample each and no clusters or weights. Unlike the normal interval,
  it stays inside [0, 1] and has near-nominal coverage at small n and extreme rates (Brown, Cai & DasGupta 2001,
  Statistical Science 16(2):101-133). For example, AIME24 (n = 30) at 0/30 gets [0, 0.114] rather than [0, 0].
- otherwise the normal interval, mean +- z * SE (Miller's CLT interval). With clusters, the critical value comes from
  Student's t with G - 1 degrees of freedom instead of z (Cameron & Miller 2015, "A Practitioner's Guide to
  Cluster-Robust Inference", J. Human Resources 50(2), section VI: with few clusters, z over-rejects). This matters
  for MMLU-Pro's 14 categories, where t(13) is 2.16 against z = 1.96.
Differences between models (checkpoint vs base, run vs run) use `paired_difference`, normal or t in the same way.

Small-sample correction of the cluster-robust variance: CR1, G/(G-1) * sum_c (sum_{i in c} w_i (s_i - mean))^2 / W^2,
where W = sum_i w_i (Stata's `vce(cluster)` factor for a regression on a constant, Cameron & Miller 2015 section
VI.C). With every item in its own cluster, it equals the usual sd(s)/sqrt(n) exactly (the SE lm-eval reports), so
clustering adds no spurious change.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

# ---------------------------------------------------------------------------------------------------- item scores

def _per_row(values, rows: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != rows:
        raise ValueError(f"{name}: {arr.shape[0] if arr.ndim else 'a scalar'} values for {rows} score rows "
                         f"(give one per row of scores)")
    if pd.isna(arr).any():
        raise ValueError(f"{name}: row {int(np.flatnonzero(pd.isna(arr))[0])} is missing")
    return arr


def item_scores(scores, items=None, clusters=None, weights=None) -> pd.DataFrame:
    """One row per item, indexed by item id (0..n-1 when `items` is None), in first-seen order.

    Columns: score (the mean over the item's samples), samples, within_var (the unbiased variance over its samples;
    NaN for one sample), and cluster and weight when given.
    """
    values = np.asarray(scores, dtype=float)
    if values.ndim == 2:
        if items is not None:
            raise ValueError("items: give item ids with a long 1-D score array; a 2-D array's rows are the items")
        ids = np.repeat(np.arange(values.shape[0]), values.shape[1])
        expand = values.shape[1]
        values = values.ravel()
    elif values.ndim == 1:
        ids = np.arange(len(values)) if items is None else _per_row(items, len(values), "items")
        expand = 1
    else:
        raise ValueError(f"scores: expected a 1-D or 2-D array, got shape {values.shape}")
    if len(values) == 0:
        raise ValueError("scores: no item")
    if np.isnan(values).any():
        raise ValueError(f"scores: value {int(np.flatnonzero(np.isnan(values))[0])} (flattened) is NaN")
    long = pd.DataFrame({"item": ids, "value": values})
    for name, col in (("clusters", clusters), ("weights", weights)):
        if col is not None:
            long[name] = np.repeat(_per_row(col, len(values) // expand, name), expand)
    if weights is not None:
        long["weights"] = long.weights.astype(float)
        if not (np.isfinite(long.weights) & (long.weights > 0)).all():
            raise ValueError("weights: every weight must be finite and positive")
    by_item = long.groupby("item", sort=False)
    table = pd.DataFrame({"score": by_item.value.mean(), "samples": by_item.value.size(),
                          "within_var": by_item.value.var(ddof=1)})
    for name, out in (("clusters", "cluster"), ("weights", "weight")):
        if name in long:
            several = by_item[name].nunique() > 1
            if several.any():
                item = several.index[several.to_numpy()][0]
                raise ValueError(f"{name}: item {item!r} has rows with different {name}")
            table[out] = by_item[name].first()
    table.index.name = "item"
    return table


def macro_weights(clusters) -> np.ndarray:
    """Weights 1 / (size of the item's cluster): the weighted mean is then the unweighted mean of cluster means."""
    codes, _ = pd.factorize(np.asarray(clusters))
    return 1.0 / np.bincount(codes)[codes]


def _mean_se(y: np.ndarray, weights=None, clusters=None) -> tuple[float, float, int]:
    """Weighted mean, its CR1 cluster-robust SE (each item its own cluster when `clusters` is None), units."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    total = w.sum()
    mean = float((w * y).sum() / total)
    resid = w * (y - mean)
    if clusters is not None:
        resid = np.bincount(pd.factorize(np.asarray(clusters))[0], weights=resid)
    units = len(resid)
    if units < 2:
        return mean, math.nan, units
    return mean, math.sqrt(units / (units - 1) * float((resid ** 2).sum()) / total ** 2), units


def _critical(level: float, clustered: bool, units: int) -> tuple[float, str]:
    if not 0 < level < 1:
        raise ValueError(f"level: {level} is not in (0, 1)")
    if clustered:
        df = max(units - 1, 1)
        return float(stats.t.ppf((1 + level) / 2, df)), f"t{df}"
    return float(stats.norm.ppf((1 + level) / 2)), "normal"


def _p_value(estimate: float, se: float, label: str) -> float:
    if not se > 0:
        return math.nan
    z = abs(estimate) / se
    return float(2 * (stats.norm.sf(z) if label == "normal" else stats.t.sf(z, int(label[1:]))))


# ---------------------------------------------------------------------------------------------------- one score

def score_interval(scores, clusters=None, items=None, weights=None, level: float = 0.95,
                   interval: str = "auto") -> dict:
    """A task score with its standard error and confidence interval.

    `interval`: "auto" (Wilson for 0/1 items with one sample, no clusters or weights; otherwise normal, or t(G-1)
    with clusters), "normal" (normal, or t(G-1) with clusters), or "wilson" (an error when it does not apply).
    Returns mean, stderr (clustered when `clusters` is given), low, high, level, interval (which one: "wilson",
    "normal" or "t<df>"), n (items), n_clusters (clusters; n without them), samples_per_item (mean K),
    stderr_unclustered, and Miller's two parts of the variance: between_var (Var(x), of the items' expected scores;
    NaN unless every item has 2+ samples) and within_var (E[sigma_i^2]; NaN with one sample per item).
    """
    table = item_scores(scores, items, clusters, weights)
    y = table.score.to_numpy()
    w = table.weight.to_numpy(float) if weights is not None else None
    cl = table.cluster.to_numpy() if clusters is not None else None
    mean, se, units = _mean_se(y, w, cl)
    se_plain = _mean_se(y, w)[1] if cl is not None else se
    k = table.samples.to_numpy()
    wilson_ok = cl is None and w is None and (k == 1).all() and np.isin(y, (0.0, 1.0)).all()
    if interval not in ("auto", "normal", "wilson"):
        raise ValueError(f"interval: {interval!r} is not one of auto, normal, wilson")
    if interval == "wilson" and not wilson_ok:
        raise ValueError("interval='wilson' needs 0/1 scores, one sample per item, no clusters and no weights")
    if wilson_ok and interval != "normal":
        ci = stats.binomtest(int(y.sum()), len(y)).proportion_ci(confidence_level=level, method="wilson")
        low, high, label = float(ci.low), float(ci.high), "wilson"
    else:
        crit, label = _critical(level, cl is not None, units)
        low, high = mean - crit * se, mean + crit * se
    within = table.within_var.to_numpy()
    between = (float(np.var(y, ddof=1) - np.mean(within / k))
               if (k > 1).all() and len(y) > 1 else math.nan)
    return {"mean": mean, "stderr": se, "low": low, "high": high, "level": level, "interval": label,
            "n": len(y), "n_clusters": units, "samples_per_item": float(k.mean()), "stderr_unclustered": se_plain,
            "between_var": between, "within_var": float(np.nanmean(within)) if (k > 1).any() else math.nan}


def stderr_with_samples(between_var: float, within_var: float, n: int, k: int) -> float:
    """Miller's SE of a mean over n unclustered items with k samples each: sqrt((Var(x) + E[sigma^2] / k) / n)."""
    return math.sqrt((between_var + within_var / k) / n)


# ---------------------------------------------------------------------------------------------------- differences

def _shared_items(a, b, items_a, items_b, clusters, weights) -> tuple[pd.DataFrame, int, int]:
    """Item scores of a and b joined on item id (clusters and weights from a), and the items only one side has."""
    if (items_a is None) != (items_b is None):
        raise ValueError("items_a, items_b: give item ids for both sides or for neither")
    ta = item_scores(a, items_a, clusters, weights)
    tb = item_scores(b, items_b)
    if items_a is None and len(ta) != len(tb):
        raise ValueError(f"a has {len(ta)} items and b {len(tb)}: without item ids they must line up one to one")
    joined = ta.join(tb.score.rename("score_b"), how="inner")
    if joined.empty:
        raise ValueError(f"a and b share no item: a has {len(ta)} items (e.g. {list(ta.index[:3])}), "
                         f"b has {len(tb)} (e.g. {list(tb.index[:3])})")
    return joined, len(ta) - len(joined), len(tb) - len(joined)


def paired_difference(a, b, items_a=None, items_b=None, clusters=None, weights=None, level: float = 0.95) -> dict:
    """Score of a minus score of b over the items both were scored on (inner join on item id), with the paired SE.

    `clusters` and `weights` line up with the rows of `a`. Without item ids, a and b line up by position.
    Returns diff, stderr, low, high, significant (0 outside [low, high]), p_value (two-sided), level, interval,
    n (shared items), n_clusters, n_only_a, n_only_b (items one side lacks, left out), mean_a, mean_b and corr
    (Pearson correlation of the item scores: the higher it is, the more pairing narrows the interval).
    """
    joined, only_a, only_b = _shared_items(a, b, items_a, items_b, clusters, weights)
    w = joined.weight.to_numpy(float) if weights is not None else None
    cl = joined.cluster.to_numpy() if clusters is not None else None
    sa, sb = joined.score.to_numpy(), joined.score_b.to_numpy()
    diff, se, units = _mean_se(sa - sb, w, cl)
    crit, label = _critical(level, cl is not None, units)
    low, high = diff - crit * se, diff + crit * se
    varies = len(sa) > 1 and sa.std() > 0 and sb.std() > 0
    return {"diff": diff, "stderr": se, "low": low, "high": high, "significant": bool(low > 0 or high < 0),
            "p_value": _p_value(diff, se, label), "level": level, "interval": label, "n": len(joined),
            "n_clusters": units, "n_only_a": only_a, "n_only_b": only_b, "mean_a": _mean_se(sa, w)[0],
            "mean_b": _mean_se(sb, w)[0], "corr": float(np.corrcoef(sa, sb)[0, 1]) if varies else math.nan}


def independent_difference(mean_a: float, se_a: float, mean_b: float, se_b: float, level: float = 0.95) -> dict:
    """a minus b for two scores on independent item sets (or known only as mean and SE): SE = sqrt(se_a^2 + se_b^2)."""
    diff, se = mean_a - mean_b, math.hypot(se_a, se_b)
    crit, label = _critical(level, False, 0)
    low, high = diff - crit * se, diff + crit * se
    return {"diff": diff, "stderr": se, "low": low, "high": high, "significant": bool(low > 0 or high < 0),
            "p_value": _p_value(diff, se, label), "level": level, "interval": label}


def unpaired_difference(a, b, items_a=None, items_b=None, clusters_a=None, clusters_b=None, weights_a=None,
                        weights_b=None, level: float = 0.95) -> dict:
    """a minus b ignoring any pairing of items: each side's own (clustered) SE, combined as independent."""
    sa = score_interval(a, clusters_a, items_a, weights_a, level, interval="normal")
    sb = score_interval(b, clusters_b, items_b, weights_b, level, interval="normal")
    return {**independent_difference(sa["mean"], sa["stderr"], sb["mean"], sb["stderr"], level),
            "n_a": sa["n"], "n_b": sb["n"]}


# ---------------------------------------------------------------------------------------------------- bootstrap

def bootstrap_interval(a, b=None, items_a=None, items_b=None, clusters=None, weights=None, level: float = 0.95,
                       n_resamples: int = 9999, method: str = "BCa", seed: int = 0) -> dict:
    """A cross-check of `score_interval` (b None) or `paired_difference` (b given) by scipy.stats.bootstrap.

    It resamples items, or whole clusters when `clusters` is given (the cluster bootstrap), and recomputes the
    (weighted) mean of the item scores or of the paired differences. `method`: "BCa", "percentile" or "basic".
    Returns mean (or diff and significant), stderr (the bootstrap SD), low, high, level, interval, n, n_clusters.
    BCa gives NaN bounds (with scipy's DegenerateDataWarning) when every unit has the same value.
    """
    if b is None:
        table = item_scores(a, items_a, clusters, weights)
        y = table.score.to_numpy()
    else:
        table = _shared_items(a, b, items_a, items_b, clusters, weights)[0]
        y = (table.score - table.score_b).to_numpy()
    w = table.weight.to_numpy(float) if weights is not None else np.ones(len(y))
    num, den = w * y, w
    if clusters is not None:
        codes = pd.factorize(table.cluster.to_numpy())[0]
        num, den = np.bincount(codes, weights=num), np.bincount(codes, weights=den)
    if len(num) < 2:
        raise ValueError(f"bootstrap_interval: {len(num)} resampling unit; it needs at least 2")
    rng = np.random.default_rng(seed)
    res = stats.bootstrap((num, den), lambda n_, d_, axis: n_.sum(axis) / d_.sum(axis), paired=True,
                          vectorized=True, n_resamples=n_resamples, confidence_level=level, method=method,
                          batch=max(1, 5_000_000 // len(num)), rng=rng)
    estimate = float(num.sum() / den.sum())
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    out = {"stderr": float(res.standard_error), "low": low, "high": high, "level": level,
           "interval": f"bootstrap {method}", "n": len(y), "n_clusters": len(num)}
    if b is None:
        return {"mean": estimate, **out}
    return {"diff": estimate, **out, "significant": bool(low > 0 or high < 0)}


# ---------------------------------------------------------------------------------------------------- pass@k

def pass_at_k(n, c, k) -> np.ndarray:
    """Chen et al.'s unbiased pass@k, 1 - C(n-c, k) / C(n, k), for n samples of which c are correct; broadcasts.

    The ratio is symmetric in c and k, so it is computed as the product of min(c, k) factors
    prod_{j < min(c,k)} (1 - max(c,k) / (n - j)), each in [0, 1]: no factorial overflows (n in the thousands).
    """
    n, c, k = np.broadcast_arrays(np.asarray(n), np.asarray(c), np.asarray(k))
    for name, arr in (("n", n), ("c", c), ("k", k)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"pass_at_k: {name} must be integers, got {arr.dtype}")
    if ((c < 0) | (c > n)).any():
        raise ValueError("pass_at_k: c (correct samples) must lie in [0, n]")
    if ((k < 1) | (k > n)).any():
        raise ValueError("pass_at_k: k must lie in [1, n]; the estimator needs n >= k samples")
    few, many = np.minimum(c, k), np.maximum(c, k)
    j = np.arange(few.max(initial=0))
    factors = np.clip(1.0 - many[..., None] / np.maximum(n[..., None] - j, 1), 0.0, 1.0)  # n - j >= 1 where used
    return 1.0 - np.where(j < few[..., None], factors, 1.0).prod(axis=-1)


def pass_at_k_curve(correct, clusters=None, weights=None, level: float = 0.95) -> pd.DataFrame:
    """pass@k for k = 1..n from an items x n matrix of 0/1 sample outcomes: the mean over items of each item's
    unbiased estimate, with its SE over items (clustered when `clusters` is given) and a normal (or t) interval
    clipped to [0, 1]. Columns: k, pass_at_k, stderr, low, high, n_items."""
    outcome = np.asarray(correct)
    if outcome.ndim != 2 or outcome.shape[1] == 0 or not np.isin(outcome, (0, 1)).all():
        raise ValueError(f"correct: expected an items x samples matrix of 0/1, got shape {outcome.shape}")
    items, n = outcome.shape
    c = outcome.sum(axis=1).astype(int)
    # C(n-c, k) / C(n, k) = prod_{j<k} (n - c - j) / (n - j): a running product over k, clipped at 0 once k > n - c
    j = np.arange(n)
    fail = np.cumprod(np.clip((n - c[:, None] - j) / (n - j), 0.0, 1.0), axis=1)
    if clusters is not None:
        clusters = _per_row(clusters, items, "clusters")
    if weights is not None:
        weights = _per_row(weights, items, "weights").astype(float)
    rows = []
    for kk in range(1, n + 1):
        mean, se, units = _mean_se(1.0 - fail[:, kk - 1], weights, clusters)
        crit, _ = _critical(level, clusters is not None, units)
        rows.append({"k": kk, "pass_at_k": mean, "stderr": se, "low": max(0.0, mean - crit * se),
                     "high": min(1.0, mean + crit * se), "n_items": items})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- seeds, many tests

def seed_summary(frame: pd.DataFrame, value_col: str, by: list[str], seed_col: str = "seed",
                 level: float = 0.95) -> pd.DataFrame:
    """One row per `by` group over its seeds: mean, sd (n-1), min, max, n_seeds, low and high (a t interval for the
    mean over seeds, NaN with one seed) and each seed's own value in a column "<value_col>@seed=<seed>"."""
    missing = [col for col in [*by, seed_col, value_col] if col not in frame.columns]
    if missing:
        raise ValueError(f"seed_summary: the frame has no column {missing} (it has {list(frame.columns)})")
    dup = frame.duplicated([*by, seed_col])
    if dup.any():
        row = frame[dup].iloc[0]
        raise ValueError(f"seed_summary: several rows for {dict(row[[*by, seed_col]])}")
    if frame[value_col].isna().any():
        raise ValueError(f"seed_summary: {value_col} is missing in row {frame.index[frame[value_col].isna()][0]}")
    grouped = frame.groupby(by, sort=False)[value_col]
    out = grouped.agg(mean="mean", sd="std", min="min", max="max", n_seeds="size")
    half = stats.t.ppf((1 + level) / 2, (out.n_seeds - 1).clip(lower=1)) * out.sd / np.sqrt(out.n_seeds)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    wide = frame.pivot(index=by, columns=seed_col, values=value_col)
    wide.columns = [f"{value_col}@{seed_col}={s}" for s in wide.columns]
    return out.join(wide).reset_index()


def seeded_difference(per_seed: list[list[np.ndarray]], level: float = 0.95) -> dict:
    """A paired difference measured on the same items for each of S training seeds, with an interval that carries
    the noise of both: per_seed[s][p] holds seed s's per-item differences on part p (a task; the estimate is the
    mean over parts of each part's mean, the parts' items disjoint, each part's items the same for every seed).

    Items and seeds are crossed, so the variance of the seed-averaged estimate is an item part plus a seed part
    (two-way crossed random effects, e.g. Searle, Casella & McCulloch 1992, "Variance Components", ch. 4):
    v_items = sum_p sd(D_pi)^2 / n_p / P^2 with D_pi the item's difference averaged over seeds, and
    v_seeds = sd(e_s)^2 / S with e_s the seed's own estimate (the item x seed interaction enters both: conservative).
    The critical value is t with Satterthwaite's (1946) degrees of freedom, (sum v)^2 / sum(v_k^2 / df_k), df_p =
    n_p - 1 and S - 1 for the seeds. Returns diff, low, high, se_items, se_seeds, df, n (items) and n_seeds."""
    seeds, parts = len(per_seed), len(per_seed[0])
    if seeds < 2 or any(len(p) != parts or [len(x) for x in p] != [len(x) for x in per_seed[0]] for p in per_seed):
        raise ValueError("seeded_difference: needs two seeds or more, each with the same parts and items")
    means = [np.mean([np.asarray(p[k], float) for p in per_seed], axis=0) for k in range(parts)]
    v_parts = [m.var(ddof=1) / len(m) / parts ** 2 for m in means]
    own = [np.mean([np.mean(x) for x in p]) for p in per_seed]
    v_seeds = float(np.var(own, ddof=1)) / seeds
    comps = list(zip(v_parts + [v_seeds], [len(m) - 1 for m in means] + [seeds - 1]))
    total = sum(v for v, _ in comps)
    df = total ** 2 / sum(v ** 2 / k for v, k in comps if v > 0) if total > 0 else math.inf
    diff, half = float(np.mean(own)), float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(total)
    return {"diff": diff, "low": diff - half, "high": diff + half, "se_items": math.sqrt(sum(v_parts)),
            "se_seeds": math.sqrt(v_seeds), "df": df, "n": sum(len(m) for m in means), "n_seeds": seeds}


def benjamini_hochberg(p_values, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Adjusted p-values (Benjamini & Hochberg 1995) and which comparisons are significant at false discovery rate
    `alpha`; NaN p-values stay NaN and are not counted.

    One study makes dozens of comparisons (tasks x runs x checkpoints), so a few spurious p < 0.05 are expected by
    chance. BH bounds the expected share of false discoveries among those marked, and it is less conservative than
    Bonferroni. It holds under independence and under positive dependence (Benjamini & Yekutieli 2001), the case for
    comparisons that share the base model's scores.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    known = ~np.isnan(p)
    if known.any():
        adjusted[known] = stats.false_discovery_control(p[known], method="bh")
    return adjusted, np.where(known, adjusted <= alpha, False)

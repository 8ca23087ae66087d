"""Confidence intervals of every score and of every difference the study makes, from the per-item scores.

- `score_intervals`: each (run, step, task, metric) score gets its 95% interval (scalpel.stats.score_interval:
  Wilson for 0/1 items, otherwise normal; cluster-robust with t(G-1) where items share a cluster).
- `differences`: each checkpoint minus the base, minus its run's reference where that is another run's final
  checkpoint (config runs.<name>.reference: a stage against its parent), and each final checkpoint minus every
  other run's final checkpoint (column `reference`: what was subtracted, `base` or `<run>@<step>`), on the primary
  metric of each task, paired over the items both were scored on (stats.paired_difference); then the
  in-domain and out-of-domain scores (the unweighted mean of their tasks), whose differences combine the tasks'
  paired SEs as independent (the tasks' item sets are disjoint). p-values are adjusted over all comparisons with
  Benjamini-Hochberg (`q_value`, `significant_bh`).
- `pass_at_k_table`: tasks scored with K > 1 samples per problem: pass@k for k = 1..K with its interval, and each
  checkpoint's change from its run's reference (the base by default; column `reference`) at every k, paired over
  problems (does training raise pass@1 more than pass@K? the paper's "amplifies vs replaces" question).
- `seed_table`: runs repeated over seeds, aggregated per configured run: quantities with mean, sd and a t interval
  over seeds kept inside the quantity's range; verdicts as counts of seeds.

A score without items (a metric lm-eval aggregates other than by a mean) keeps lm-eval's stderr and a normal
interval, marked `lm-eval stderr`.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from scalpel import io, stats
from scalpel.config import BASE
from scalpel.eval.evaluate import items_path

log = logging.getLogger(__name__)
Z95 = 1.959963984540054
DOMAINS = {"in_domain": "in-domain mean", "out_of_domain": "out-of-domain mean"}


def load_items(eval_files) -> pd.DataFrame:
    """The per-item scores beside each eval table, with its run and step."""
    frames = []
    for f in eval_files:
        table = io.read_tsv(f, dtype={"run": str, "task": str, "metric": str})
        path = items_path(f)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the per-item scores of {f} are missing (rerun its evaluate job)")
        rows = io.read_tsv(path, dtype={"task": str, "metric": str, "item": str, "cluster": str})
        frames.append(rows.assign(run=str(table.run.iloc[0]), step=int(table.step.iloc[0])))
    if not frames:
        return pd.DataFrame(columns=["run", "step", "task", "metric", "item", "value", "cluster", "weight"])
    return pd.concat(frames, ignore_index=True)


def _inputs(rows: pd.DataFrame) -> dict:
    """stats arguments for one score's items: clusters only where a cluster holds several items, weights only
    where they differ."""
    args = {"scores": rows.value.to_numpy(float), "items": rows["item"].to_numpy()}
    if rows.cluster.nunique() < len(rows):
        args["clusters"] = rows.cluster.to_numpy()
    if rows.weight.nunique() > 1:
        args["weights"] = rows.weight.to_numpy(float)
    return args


def score_intervals(scores: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """`scores` with n_items, ci_low, ci_high and interval (which one) added."""
    groups = {key: rows for key, rows in items.groupby(["run", "step", "task", "metric"], sort=False)}
    out = []
    for row in scores.itertuples(index=False):
        rows = groups.get((row.run, row.step, row.task, row.metric))
        # An item sampled several times scores a mean over its samples: never Wilson's interval for 0/1 trials.
        res = (stats.score_interval(**_inputs(rows), interval="normal" if (rows.samples > 1).any() else "auto")
               if rows is not None and not rows.empty else None)
        if res is not None and abs(res["mean"] - row.value) > 1e-6:
            log.warning("%s step %s %s %s: the items' mean %.6f is not lm-eval's score %.6f; its interval is "
                        "lm-eval's stderr", row.run, row.step, row.task, row.metric, res["mean"], row.value)
            res = None
        if res is None:
            half = Z95 * row.stderr if row.stderr == row.stderr else math.nan
            out.append({"n_items": 0, "ci_low": row.value - half, "ci_high": row.value + half,
                        "interval": "lm-eval stderr"})
            continue
        out.append({"n_items": res["n"], "ci_low": res["low"], "ci_high": res["high"], "interval": res["interval"]})
    return pd.concat([scores.reset_index(drop=True), pd.DataFrame(out, index=range(len(scores)))], axis=1)


def _pair(items: pd.DataFrame, a: tuple, b: tuple, task: str, metric: str) -> dict | None:
    ia = items[(items.run == a[0]) & (items.step == a[1]) & (items.task == task) & (items.metric == metric)]
    ib = items[(items.run == b[0]) & (items.step == b[1]) & (items.task == task) & (items.metric == metric)]
    if ia.empty or ib.empty:
        return None
    args = _inputs(ia)
    return stats.paired_difference(args.pop("scores"), ib.value.to_numpy(float), items_a=args.pop("items"),
                                   items_b=ib["item"].to_numpy(), **args)


def _reference(runs: dict, run: str) -> tuple[str, int]:
    """The model a run's checkpoints are compared with: the base, or another run's final checkpoint."""
    ref = runs[run].get("reference", BASE) if run in runs else BASE
    return (BASE, 0) if ref == BASE else (ref, max(runs[ref]["checkpoint_steps"]))


def _label(model: tuple) -> str:
    return BASE if model[0] == BASE else f"{model[0]}@{model[1]}"


def _comparisons(runs: dict) -> list[tuple[str, tuple, tuple]]:
    """(kind, model a, model b): every checkpoint vs the base, every checkpoint vs its run's reference where that is
    another run, then final checkpoints run vs run (each pair once)."""
    finals = [(r, max(spec["checkpoint_steps"])) for r, spec in runs.items()]
    out = [("vs base", (r, s), (BASE, 0)) for r, spec in runs.items() for s in spec["checkpoint_steps"]]
    out += [("vs reference", (r, s), _reference(runs, r)) for r, spec in runs.items()
            if _reference(runs, r)[0] != BASE for s in spec["checkpoint_steps"]]
    out += [("run vs run", a, b) for i, a in enumerate(finals) for b in finals[i + 1:]]
    return out


def differences(items: pd.DataFrame, runs: dict, primary: dict, domains: dict[str, list[str]]) -> pd.DataFrame:
    """One row per (comparison, task) with the paired difference a - b, its interval and p-value; tasks of a
    domain also give one row for the domain's mean when both models have all of its tasks."""
    rows = []
    for kind, a, b in _comparisons(runs):
        per_task = {}
        for task, metric in primary.items():
            res = _pair(items, a, b, task, metric)
            if res is None:
                continue
            per_task[task] = res
            rows.append({"comparison": kind, "run": a[0], "step": a[1], "vs_run": b[0], "vs_step": b[1],
                         "reference": _label(b), "task": task, "metric": metric, **_keep(res)})
        for domain, tasks in domains.items():
            if tasks and all(t in per_task for t in tasks):
                diff = float(np.mean([per_task[t]["diff"] for t in tasks]))
                se = math.sqrt(sum(per_task[t]["stderr"] ** 2 for t in tasks)) / len(tasks)
                res = stats.independent_difference(diff, se, 0.0, 0.0)
                rows.append({"comparison": kind, "run": a[0], "step": a[1], "vs_run": b[0], "vs_step": b[1],
                             "reference": _label(b), "task": DOMAINS[domain], "metric": "mean of primary metrics",
                             "mean_a": float(np.mean([per_task[t]["mean_a"] for t in tasks])),
                             "mean_b": float(np.mean([per_task[t]["mean_b"] for t in tasks])),
                             "n": sum(per_task[t]["n"] for t in tasks), **_keep(res)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["q_value"], table["significant_bh"] = stats.benjamini_hochberg(table.p_value.to_numpy())
    return table


def _keep(res: dict) -> dict:
    keys = ("mean_a", "mean_b", "diff", "stderr", "low", "high", "p_value", "significant", "interval", "n")
    return {k: res[k] for k in keys if k in res}


def seed_table(summary: pd.DataFrame, runs: dict, columns: list[str], bounds: dict | None = None) -> pd.DataFrame:
    """Runs repeated over seeds, per configured run (group) and column of `summary`, with each seed's value:
    a quantity's mean, sd, min, max and 95% t interval over seeds, cut to its range in `bounds` ({column: (low,
    high)}; the mean over seeds lies in the range, so the cut interval covers it whenever the t interval does); a
    verdict (a column of true/false) as the count of seeds where it is true (`seeds_true`). An interval's bounds
    (<column>_low and _high beside <column>) are no quantity and are left out. Empty when no run has several seeds."""
    columns = [c for c in columns if c in summary and not (c.endswith("_low") and c[:-4] in columns)
               and not (c.endswith("_high") and c[:-5] in columns)]
    seeded = summary[summary.run.map(lambda r: r in runs and runs[r].get("group", r) != r)]
    if seeded.empty:
        return pd.DataFrame(columns=["group", "quantity", "mean", "sd", "min", "max", "n_seeds", "low", "high",
                                     "seeds_true"])
    long = seeded.assign(group=seeded.run.map(lambda r: runs[r]["group"]),
                         seed=seeded.run.map(lambda r: runs[r]["seed"]))
    long = long.melt(id_vars=["group", "seed"], value_vars=columns, var_name="quantity")
    verdicts = [c for c in columns if seeded[c].map(lambda v: isinstance(v, (bool, np.bool_))).all()]
    is_verdict = long.quantity.isin(verdicts)
    out = stats.seed_summary(long[~is_verdict].astype({"value": float}), "value", ["group", "quantity"])
    low, high = zip(*out.quantity.map(lambda q: (bounds or {}).get(q, (-math.inf, math.inf))))
    out["low"], out["high"] = np.maximum(out.low, low), np.minimum(out.high, high)
    if is_verdict.any():
        counts = long[is_verdict].astype({"value": bool}).groupby(["group", "quantity"], sort=False).value.agg(
            seeds_true="sum", n_seeds="size")
        wide = long[is_verdict].pivot(index=["group", "quantity"], columns="seed", values="value")
        wide.columns = [f"value@seed={s}" for s in wide.columns]
        out = pd.concat([out, counts.join(wide).reset_index()], ignore_index=True).astype({"seeds_true": "Int64"})
    order = list(dict.fromkeys(long.group))
    return out.sort_values("group", key=lambda g: g.map(order.index), kind="stable", ignore_index=True)


def _per_item_pass(rows: pd.DataFrame) -> tuple[int, np.ndarray, pd.Series]:
    n = int(rows.samples.iloc[0])
    correct = rows.value.round().astype(int).to_numpy()
    return n, correct, rows["item"].reset_index(drop=True)


def pass_at_k_table(items: pd.DataFrame, runs: dict | None = None) -> pd.DataFrame:
    """One row per (run, step, task, k) for tasks with several samples per problem: pass@k (Chen et al.'s unbiased
    estimator from each problem's count of correct samples), its 95% interval over problems, and delta (with
    delta_low, delta_high) against the pass@k of the run's `reference` (`runs`' reference; the base without `runs`)
    on the same problems."""
    columns = ["run", "step", "task", "k", "pass_at_k", "low", "high", "n_items", "reference", "delta", "delta_low",
               "delta_high"]
    sampled = items[(items.metric == "samples_correct") & (items.samples > 1)]
    rows = []
    models = {key: g for key, g in sampled.groupby(["run", "step", "task"], sort=False)}
    for (run, step, task), g in models.items():
        n, correct, ids = _per_item_pass(g)
        matrix = (np.arange(n)[None, :] < correct[:, None]).astype(int)  # c ones per problem: all pass@k needs
        curve = stats.pass_at_k_curve(matrix)
        ref = _reference(runs or {}, run)
        b = models.get((*ref, task))
        for row in curve.itertuples(index=False):
            out = {"run": run, "step": step, "task": task, "k": row.k, "pass_at_k": row.pass_at_k, "low": row.low,
                   "high": row.high, "n_items": row.n_items, "reference": _label(ref) if run != BASE else None}
            if b is not None and run != BASE and int(b.samples.iloc[0]) == n:
                nb, cb, ids_b = _per_item_pass(b)
                d = stats.paired_difference(stats.pass_at_k(n, correct, row.k), stats.pass_at_k(nb, cb, row.k),
                                            items_a=ids.to_numpy(), items_b=ids_b.to_numpy())
                out.update(delta=d["diff"], delta_low=d["low"], delta_high=d["high"])
            rows.append(out)
    return pd.DataFrame(rows, columns=columns)

"""The miniature's claims, tested as docs/miniature-claims.md pre-registers them, from a finished study's results/.

Paired 95% intervals (normal approximation, `stats.paired_difference`) over eval items, KL reference examples or
weight matrices, between final checkpoints (the base at step 0); `verdict` says whether the pre-registered criterion
holds. Beside the claims, `<out stem>_pass_at_k.tsv`: pass@k per maths level and run with the paired difference to
the base.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from scalpel import io, stats

log = logging.getLogger(__name__)
OOD = {"mini_facts": "acc", "mini_instructions": "prompt_level_strict_acc"}
MATCHED = "sft_matched_lr"
FREEZING = ("sft_frozen_mid_mlp", "sft_qk_only")
PROBE_PASS = 0.6  # claim 4: the base's prompt-level strict accuracy on the instruction probe


class Study:
    """Per-item scores, KL and relative updates of each run's final checkpoint in a results folder."""

    def __init__(self, results):
        self.results = Path(results)
        self.spec = io.read_yaml(self.results / "tables/spec.yaml")
        self._samples: dict[str, pd.DataFrame] = {}

    def final(self, run: str) -> int:
        return 0 if run == "base" else max(self.spec["runs"][run]["checkpoint_steps"])

    def samples(self, run: str) -> pd.DataFrame:
        """One row per (task, item) of the run's final checkpoint: task, doc_id and the item's metric values."""
        if run not in self._samples:
            path = self.results / f"eval/{run}/step-{self.final(run)}.samples.jsonl"
            self._samples[run] = pd.DataFrame([{"task": r["task"], "doc_id": r["doc_id"], **r["metrics"]}
                                               for r in io.read_jsonl(path)])
        return self._samples[run]

    def items(self, run: str, task: str, metric: str) -> pd.Series:
        """Per-item values of `metric` on `task`, indexed by doc_id."""
        rows = self.samples(run)[self.samples(run).task == task]
        if rows.empty or metric not in rows or rows[metric].isna().any():
            raise ValueError(f"{run}: no {metric} on {task} in its final samples.jsonl")
        return rows.set_index("doc_id")[metric].sort_index()

    def paired(self, a: str, b: str, task: str, metric: str) -> dict:
        x, y = self.items(a, task, metric), self.items(b, task, metric)
        if not x.index.equals(y.index):
            raise ValueError(f"{task}: {a} and {b} were scored on different items")
        return stats.paired_difference(x.to_numpy(), y.to_numpy())

    def pooled(self, a: str, b: str, tasks: list[str], metric: str) -> dict:
        diffs = [(self.items(a, t, metric) - self.items(b, t, metric)).to_numpy() for t in tasks]
        d = np.concatenate(diffs)
        return stats.paired_difference(d, np.zeros_like(d))

    def ood(self, a: str, b: str) -> dict:
        """Unweighted mean over the OOD tasks of the paired differences; SE sqrt(sum SE_t^2) / T (disjoint items)."""
        parts = [self.paired(a, b, t, m) for t, m in OOD.items()]
        diff = float(np.mean([p["diff"] for p in parts]))
        se = math.sqrt(sum(p["stderr"] ** 2 for p in parts)) / len(parts)
        crit = norm.ppf(0.975)
        return {"diff": diff, "low": diff - crit * se, "high": diff + crit * se, "n": sum(p["n"] for p in parts)}

    def kl(self, run: str) -> np.ndarray:
        path = self.results / f"kl/{run}/step-{self.final(run)}.json"
        return np.asarray(json.loads(path.read_text())["per_example"])

    def updates(self, run: str) -> pd.Series:
        frame = pd.read_parquet(self.results / f"diff/{run}/step-{self.final(run)}.parquet")
        return frame.set_index(["layer", "module"]).rel_update.sort_index()


def _point(value: float, n: int) -> dict:
    """A reported point estimate, without an interval."""
    return {"diff": float(value), "low": math.nan, "high": math.nan, "n": n}


def _row(claim, comparison, task, metric, est: dict, criterion="reported", passed=None) -> dict:
    return {"claim": claim, "comparison": comparison, "task": task, "metric": metric, "n": est["n"],
            "estimate": est["diff"], "ci_low": est["low"], "ci_high": est["high"], "criterion": criterion,
            "verdict": "" if passed is None else ("pass" if passed else "fail")}


def claims(study: Study, in_domain: list[str], untrained: list[str]) -> pd.DataFrame:
    rows = []
    pooled = study.pooled("grpo", "base", in_domain, "pass@1")
    rows.append(_row("1a", "grpo - base", "+".join(in_domain), "pass@1", pooled, "ci_low > 0", pooled["low"] > 0))
    for task in in_domain + untrained:
        rows.append(_row("1a", "grpo - base", task, "pass@1", study.paired("grpo", "base", task, "pass@1")))
    for task, metric in OOD.items():
        est = study.paired("grpo", "base", task, metric)
        rows.append(_row("1b", "grpo - base", task, metric, est, "ci contains 0", est["low"] <= 0 <= est["high"]))
    est = study.ood("sft", "grpo")
    rows.append(_row("2", "sft - grpo", "OOD mean", "", est, "ci_high < 0", est["high"] < 0))
    for task, metric in OOD.items():
        rows.append(_row("2", "sft - grpo", task, metric, study.paired("sft", "grpo", task, metric)))
    runs = [r for r in ("grpo", "sft", MATCHED, *FREEZING) if r in study.spec["runs"]]
    for run in runs:
        rows.append(_row("ood", f"{run} - base", "OOD mean", "", study.ood(run, "base")))
    kl = {run: study.kl(run) for run in ("grpo", "sft", MATCHED)}
    est = stats.paired_difference(kl[MATCHED], kl["grpo"])
    rows.append(_row("3a", f"{MATCHED} - grpo", "KL reference", "kl_per_token", est, "ci_low > 0", est["low"] > 0))
    updates = {run: study.updates(run) for run in ("grpo", "sft", MATCHED)}
    est = stats.paired_difference(np.log(updates[MATCHED].to_numpy()), np.log(updates["grpo"].to_numpy()))
    rows.append(_row("3b", f"ln({MATCHED} / grpo)", "weights", "rel_update", est, "ci_low > 0", est["low"] > 0))
    for run in ("grpo", "sft", MATCHED):
        rows.append(_row("3", run, "KL reference", "kl_per_token", _point(kl[run].mean(), len(kl[run]))))
    for run in (MATCHED, "sft"):
        ratio = float(updates[run].mean() / updates["grpo"].mean())
        rows.append(_row("3", f"{run} / grpo", "weights", "mean rel_update ratio", _point(ratio, len(updates[run]))))
    probe = study.items("base", "mini_instructions", "prompt_level_strict_acc")
    rows.append(_row("4", "base", "mini_instructions", "prompt_level_strict_acc",
                     _point(probe.mean(), len(probe)),
                     f">= {PROBE_PASS}", probe.mean() >= PROBE_PASS))
    for run in FREEZING:
        if run in study.spec["runs"]:
            rows.append(_row("6", f"{run} - sft", "OOD mean", "", study.ood(run, "sft")))
    return pd.DataFrame(rows)


def pass_at_k(study: Study, tasks: list[str], runs: list[str]) -> pd.DataFrame:
    """pass@k (the per-item unbiased estimates' mean) per task, run and k, with the paired difference to the base."""
    rows = []
    for task in tasks:
        base = study.samples("base")
        metrics = base[base.task == task].dropna(axis=1, how="all").columns
        ks = sorted(int(m.split("@")[1]) for m in metrics if m.startswith("pass@"))
        for run in runs:
            for k in ks:
                metric = f"pass@{k}"
                est = (study.paired(run, "base", task, metric) if run != "base"
                       else {"diff": math.nan, "low": math.nan, "high": math.nan})
                score = float(study.items(run, task, metric).mean())
                rows.append({"run": run, "task": task, "k": k, "pass_at_k": score, "delta_vs_base": est["diff"],
                             "ci_low": est["low"], "ci_high": est["high"]})
    return pd.DataFrame(rows)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("claims", help="test the miniature's pre-registered claims (docs/miniature-claims.md)")
    p.add_argument("--results", required=True, help="a finished study's results folder")
    p.add_argument("--in-domain", nargs="+", required=True, help="the maths tasks of the trained levels")
    p.add_argument("--untrained", nargs="*", default=[], help="maths tasks of untrained levels (reported only)")
    p.add_argument("--out", required=True, help="claims TSV; the pass@k table goes beside it")
    p.set_defaults(func=main)


def main(args) -> None:
    study = Study(args.results)
    out = Path(args.out)
    table = claims(study, args.in_domain, args.untrained)
    curves = pass_at_k(study, args.in_domain + args.untrained, ["base", "grpo", "sft"])
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False, float_format="%.4g")
    curves.to_csv(out.with_name(out.stem + "_pass_at_k.tsv"), sep="\t", index=False, float_format="%.4g")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        log.info("claims:\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        log.info("pass@k:\n%s", curves.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

"""The miniature's claims, tested as docs/miniature-claims.md pre-registers them, from a finished study's results/.

Paired 95% intervals (normal approximation, `stats.paired_difference`) over eval items, KL reference examples or
weight matrices, between final checkpoints (the base at step 0); `verdict` says whether the pre-registered criterion
holds. Each item's score is read from the item tables the evaluations wrote (`intervals.load_items`), and claim 5's
pass@k rows from the study's `pass_at_k.tsv` (`intervals.pass_at_k_table`): nothing is scored twice. Beside the
claims, `<out stem>_seeds.tsv`: with runs repeated over training seeds, each claim decided over seeds (per-seed
verdicts as a count, one interval over items and seeds: `stats.seeded_difference`; empty without seeds). With seeds,
the claims table is the first seed's.
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
from scalpel.config import seeded_name
from scalpel.report.intervals import load_items

log = logging.getLogger(__name__)
OOD = {"mini_facts": "acc", "mini_instructions": "prompt_level_strict_acc"}
MATCHED = "sft_matched_lr"
FREEZING = ("sft_frozen_mid_mlp", "sft_qk_only")
PROBE_PASS = 0.6  # claim 4: the base's prompt-level strict accuracy on the instruction probe
CRITERIA = {"ci_low > 0": lambda low, high: low > 0, "ci contains 0": lambda low, high: low <= 0 <= high,
            "ci_high < 0": lambda low, high: high < 0}


class Study:
    """Per-item scores, KL and relative updates of each run's final checkpoint in a results folder; with `seed`, a
    configured run's name means its run of that seed (<name>-seed<seed>) where it was repeated over seeds."""

    def __init__(self, results, seed: int | None = None):
        self.results = Path(results)
        self.spec = io.read_yaml(self.results / "tables/spec.yaml")
        self.seed = seed
        self._items: dict[str, pd.DataFrame] = {}

    def seeds(self) -> list[int]:
        """The seeds of the runs repeated over seeds (none: no run was)."""
        return sorted({spec["seed"] for name, spec in self.spec["runs"].items() if spec.get("group", name) != name})

    def run(self, name: str) -> str:
        seeded = seeded_name(name, self.seed) if self.seed is not None else None
        return seeded if seeded in self.spec["runs"] else name

    def has(self, name: str) -> bool:
        return self.run(name) in self.spec["runs"]

    def final(self, run: str) -> int:
        return 0 if run == "base" else max(self.spec["runs"][self.run(run)]["checkpoint_steps"])

    def item_table(self, run: str) -> pd.DataFrame:
        """The item table of the run's final checkpoint (task, metric, item, value, ...)."""
        if run not in self._items:
            self._items[run] = load_items([self.results / f"eval/{self.run(run)}/step-{self.final(run)}.tsv"])
        return self._items[run]

    def items(self, run: str, task: str, metric: str) -> pd.Series:
        """Per-item values of `metric` on `task`, indexed by item (lm-eval's doc_id)."""
        table = self.item_table(run)
        rows = table[(table.task == task) & (table.metric == metric)]
        if rows.empty or rows.value.isna().any():
            raise ValueError(f"{self.run(run)}: no {metric} on {task} in its final item table")
        return rows.set_index("item").value.sort_index()

    def paired(self, a: str, b: str, task: str, metric: str) -> dict:
        d = self.differences(a, b, task, metric)
        return stats.paired_difference(d, np.zeros_like(d))

    def differences(self, a: str, b: str, task: str, metric: str) -> np.ndarray:
        """Per-item a - b on `task`, in doc_id order."""
        x, y = self.items(a, task, metric), self.items(b, task, metric)
        if not x.index.equals(y.index):
            raise ValueError(f"{task}: {a} and {b} were scored on different items")
        return (x - y).to_numpy()

    def kl(self, run: str) -> np.ndarray:
        path = self.results / f"kl/{self.run(run)}/step-{self.final(run)}.json"
        return np.asarray(json.loads(path.read_text())["per_example"])

    def updates(self, run: str) -> pd.Series:
        frame = pd.read_parquet(self.results / f"diff/{self.run(run)}/step-{self.final(run)}.parquet")
        return frame.set_index(["layer", "module"]).rel_update.sort_index()


def estimate(parts: list[np.ndarray]) -> dict:
    """The mean over parts (tasks with disjoint items) of each part's mean paired difference, with the normal 95%
    interval of SE sqrt(sum SE_p^2) / P: with one part, `stats.paired_difference`'s (the pre-registered tests)."""
    diff = float(np.mean([p.mean() for p in parts]))
    se = math.sqrt(sum(p.var(ddof=1) / len(p) for p in parts)) / len(parts)
    crit = norm.ppf(0.975)
    return {"diff": diff, "low": diff - crit * se, "high": diff + crit * se, "n": sum(len(p) for p in parts)}


def tested(study: Study, in_domain: list[str], untrained: list[str]) -> list[dict]:
    """Every claim row with an interval: claim, comparison, task, metric, criterion (None: reported) and parts, the
    per-item differences of each task (see `estimate`)."""
    d, ood = study.differences, (lambda a, b: [study.differences(a, b, t, m) for t, m in OOD.items()])

    def row(claim, comparison, task, metric, parts, criterion=None):
        return {"claim": claim, "comparison": comparison, "task": task, "metric": metric, "parts": parts,
                "criterion": criterion}

    rows = [row("1a", "grpo - base", "+".join(in_domain), "pass@1",
                [np.concatenate([d("grpo", "base", t, "pass@1") for t in in_domain])], "ci_low > 0")]
    rows += [row("1a", "grpo - base", t, "pass@1", [d("grpo", "base", t, "pass@1")]) for t in in_domain + untrained]
    rows += [row("1b", "grpo - base", t, m, [d("grpo", "base", t, m)], "ci contains 0") for t, m in OOD.items()]
    rows.append(row("2", "sft - grpo", "OOD mean", "", ood("sft", "grpo"), "ci_high < 0"))
    rows += [row("2", "sft - grpo", t, m, [d("sft", "grpo", t, m)]) for t, m in OOD.items()]
    rows += [row("ood", f"{r} - base", "OOD mean", "", ood(r, "base"))
             for r in ("grpo", "sft", MATCHED, *FREEZING) if study.has(r)]
    rows.append(row("3a", f"{MATCHED} - grpo", "KL reference", "kl_per_token",
                    [study.kl(MATCHED) - study.kl("grpo")], "ci_low > 0"))
    updates = {run: study.updates(run) for run in ("grpo", MATCHED)}
    if not updates[MATCHED].index.equals(updates["grpo"].index):
        raise ValueError(f"{MATCHED} and grpo have different weight matrices")
    rows.append(row("3b", f"ln({MATCHED} / grpo)", "weights", "rel_update",
                    [np.log(updates[MATCHED].to_numpy()) - np.log(updates["grpo"].to_numpy())], "ci_low > 0"))
    rows += [row("6", f"{r} - sft", "OOD mean", "", ood(r, "sft")) for r in FREEZING if study.has(r)]
    return rows


def _point(value: float, n: int) -> dict:
    """A reported point estimate, without an interval."""
    return {"diff": float(value), "low": math.nan, "high": math.nan, "n": n}


def _row(claim, comparison, task, metric, est: dict, criterion="reported", passed=None) -> dict:
    return {"claim": claim, "comparison": comparison, "task": task, "metric": metric, "n": est["n"],
            "estimate": est["diff"], "ci_low": est["low"], "ci_high": est["high"], "criterion": criterion,
            "verdict": "" if passed is None else ("pass" if passed else "fail")}


def claims(study: Study, in_domain: list[str], untrained: list[str]) -> pd.DataFrame:
    rows = []
    for test in tested(study, in_domain, untrained):
        est, criterion = estimate(test["parts"]), test["criterion"]
        rows.append(_row(test["claim"], test["comparison"], test["task"], test["metric"], est,
                         criterion or "reported", CRITERIA[criterion](est["low"], est["high"]) if criterion else None))
    kl = {run: study.kl(run) for run in ("grpo", "sft", MATCHED)}
    updates = {run: study.updates(run) for run in ("grpo", "sft", MATCHED)}
    for run in ("grpo", "sft", MATCHED):
        rows.append(_row("3", run, "KL reference", "kl_per_token", _point(kl[run].mean(), len(kl[run]))))
    for run in (MATCHED, "sft"):
        ratio = float(updates[run].mean() / updates["grpo"].mean())
        rows.append(_row("3", f"{run} / grpo", "weights", "mean rel_update ratio", _point(ratio, len(updates[run]))))
    probe = study.items("base", "mini_instructions", "prompt_level_strict_acc")
    rows.append(_row("4", "base", "mini_instructions", "prompt_level_strict_acc",
                     _point(probe.mean(), len(probe)),
                     f">= {PROBE_PASS}", probe.mean() >= PROBE_PASS))
    return pd.DataFrame(rows)


SEEDED = ["claim", "comparison", "task", "metric", "n", "n_seeds", "estimate", "ci_low", "ci_high", "se_items",
          "se_seeds", "df", "criterion", "seeds_pass", "verdict"]


def seeded_claims(results, seeds: list[int], in_domain: list[str], untrained: list[str]) -> pd.DataFrame:
    """Each claim row with an interval decided over seeds (docs/miniature-claims.md, "Over training seeds"): the
    seed-averaged difference with its interval over items and seeds (`stats.seeded_difference`) and the criterion on
    it (`verdict`), the count of seeds whose own test passes (`seeds_pass`) and each seed's estimate; then claim 4."""
    studies = [Study(results, seed) for seed in seeds]
    rows = []
    for tests in zip(*(tested(study, in_domain, untrained) for study in studies)):
        first, criterion = tests[0], tests[0]["criterion"]
        est = stats.seeded_difference([test["parts"] for test in tests])
        own = [estimate(test["parts"]) for test in tests]
        rows.append({key: first[key] for key in ("claim", "comparison", "task", "metric")} | {
            "n": est["n"], "n_seeds": len(seeds), "estimate": est["diff"], "ci_low": est["low"],
            "ci_high": est["high"], "se_items": est["se_items"], "se_seeds": est["se_seeds"], "df": est["df"],
            "criterion": criterion or "reported",
            "seeds_pass": sum(CRITERIA[criterion](e["low"], e["high"]) for e in own) if criterion else math.nan,
            "verdict": ("pass" if CRITERIA[criterion](est["low"], est["high"]) else "fail") if criterion else "",
            **{f"estimate@seed={seed}": e["diff"] for seed, e in zip(seeds, own)}})
    probe = studies[0].items("base", "mini_instructions", "prompt_level_strict_acc")
    passed = probe.mean() >= PROBE_PASS  # the base: the same model for every seed
    rows.append({"claim": "4", "comparison": "base", "task": "mini_instructions", "metric": "prompt_level_strict_acc",
                 "n": len(probe), "n_seeds": len(seeds), "estimate": probe.mean(), "criterion": f">= {PROBE_PASS}",
                 "seeds_pass": len(seeds) if passed else 0, "verdict": "pass" if passed else "fail"})
    return pd.DataFrame(rows).reindex(columns=SEEDED + [c for c in rows[0] if c not in SEEDED])


def pass_at_k(study: Study, tasks: list[str], runs: list[str]) -> list[dict]:
    """Claim 5 (descriptive): each run's change in pass@k from the base at k = 1 and the largest k, per maths task,
    as the study's pass@k table gives it for the final checkpoints."""
    table = io.read_tsv(study.results / "tables/pass_at_k.tsv", dtype={"run": str, "task": str})
    rows = []
    for task in tasks:
        for run in runs:
            hit = table[(table.run == study.run(run)) & (table.step == study.final(run)) & (table.task == task)]
            if hit.empty:
                raise ValueError(f"pass_at_k.tsv: no pass@k of {study.run(run)} on {task} (several samples needed)")
            for k in sorted({1, int(hit.k.max())}):
                r = hit[hit.k == k].iloc[0]
                rows.append(_row("5", f"{run} - base", task, f"pass@{k}", {"diff": r.delta, "low": r.delta_low,
                                                                          "high": r.delta_high, "n": r.n_items}))
    return rows


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("claims", help="test the miniature's pre-registered claims (docs/miniature-claims.md)")
    p.add_argument("--results", required=True, help="a finished study's results folder")
    p.add_argument("--in-domain", nargs="+", required=True, help="the maths tasks of the trained levels")
    p.add_argument("--untrained", nargs="*", default=[], help="maths tasks of untrained levels (reported only)")
    p.add_argument("--out", required=True, help="claims TSV; the seeded decision goes beside it")
    p.set_defaults(func=main)


def main(args) -> None:
    seeds = Study(args.results).seeds()
    study = Study(args.results, seeds[0] if seeds else None)
    out = Path(args.out)
    table = claims(study, args.in_domain, args.untrained)
    table = pd.concat([table, pd.DataFrame(pass_at_k(study, args.in_domain + args.untrained, ["grpo", "sft"]))],
                      ignore_index=True)
    seeded = (seeded_claims(args.results, seeds, args.in_domain, args.untrained) if len(seeds) > 1
              else pd.DataFrame(columns=SEEDED))
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False, float_format="%.4g")
    seeded.to_csv(out.with_name(out.stem + "_seeds.tsv"), sep="\t", index=False, float_format="%.4g")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        log.info("claims:\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if not seeded.empty:
            log.info("over seeds %s:\n%s", seeds,
                     seeded[SEEDED].to_string(index=False, float_format=lambda v: f"{v:.4f}"))

"""The claims command on a hand-made results folder: paired intervals, verdicts and pass@k rows from known values."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scalpel import cli
from scalpel.report import claims

RUNS = {"grpo": 4, "sft": 4, "sft_matched_lr": 4, "sft_frozen_mid_mlp": 4, "sft_qk_only": 4}


def write_items(path, run, step, tasks):
    """An eval table and its item table (as evaluate writes them) at path (step-N.tsv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    items = []
    for task, (metric, values) in tasks.items():
        for i, v in enumerate(values):
            metrics = {metric: v} if metric != "pass@1" else {"pass@1": v, "pass@2": min(1.0, 2 * v)}
            items += [{"task": task, "metric": m, "item": str(i), "value": x, "cluster": str(i), "weight": 1.0,
                       "samples": 1} for m, x in metrics.items()]
    items = pd.DataFrame(items)
    scores = items.groupby(["task", "metric"], as_index=False).value.mean().assign(run=run, step=step, stderr=0.0)
    scores[["run", "step", "task", "metric", "value", "stderr"]].to_csv(path, sep="\t", index=False)
    items.to_csv(path.with_suffix(".items.tsv"), sep="\t", index=False)
    return items


def write_pass_at_k(path, items: dict):
    """pass_at_k.tsv rows (the tables rule's) for each (run, step) -> item table: pass@k's mean and the paired
    difference to the base with a made-up interval of +-0.01."""
    rows = []
    base = items[("base", 0)]
    for (run, step), table in items.items():
        for task in ("mini_math_l1", "mini_math_l2", "mini_math_l3"):
            for k in (1, 2):
                mine = table[(table.task == task) & (table.metric == f"pass@{k}")].value
                delta = mine.mean() - base[(base.task == task) & (base.metric == f"pass@{k}")].value.mean()
                rows.append({"run": run, "step": step, "task": task, "k": k, "pass_at_k": mine.mean(), "low": 0,
                             "high": 1, "n_items": len(mine), "delta": delta if run != "base" else None,
                             "delta_low": delta - 0.01 if run != "base" else None,
                             "delta_high": delta + 0.01 if run != "base" else None})
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def write_results(path, seeds=(None,), grpo_gain=(0.3,)):
    """A results folder: every run once, or once per seed (<run>-seed<s>), GRPO gaining grpo_gain[s] on each maths
    item; every other score, KL and update the same for every seed."""
    rng = np.random.default_rng(0)
    (path / "tables").mkdir()
    maths = {"base": rng.uniform(0, 0.5, 40)}
    facts = {"base": np.ones(30), "grpo": np.r_[np.zeros(1), np.ones(29)], "sft": np.r_[np.zeros(15), np.ones(15)]}
    probes = {"base": np.ones(20), "grpo": np.ones(20), "sft": np.zeros(20)}
    runs, written = {}, {}
    for seed, gain in zip(seeds, grpo_gain):
        maths["grpo"] = maths["base"] + gain
        for run in ["base", *RUNS] if not runs else RUNS:
            name = run if seed is None or run == "base" else f"{run}-seed{seed}"
            step = 0 if run == "base" else RUNS[run]
            if run != "base":
                runs[name] = {"method": "grpo" if run == "grpo" else "sft", "checkpoint_steps": [2, step],
                              "group": run, "seed": seed or 0}
            written[(name, step)] = write_items(path / f"eval/{name}/step-{step}.tsv", name, step, {
                "mini_math_l1": ("pass@1", maths.get(run, maths["base"])[:20]),
                "mini_math_l2": ("pass@1", maths.get(run, maths["base"])[20:]),
                "mini_math_l3": ("pass@1", maths["base"][:20]),
                "mini_facts": ("acc", facts.get(run, facts["sft"])),
                "mini_instructions": ("prompt_level_strict_acc", probes.get(run, probes["sft"]))})
            if run != "base":
                kl = np.full(10, 0.1) if run == "grpo" else np.linspace(0.2, 0.4, 10)
                (path / f"kl/{name}").mkdir(parents=True)
                (path / f"kl/{name}/step-{step}.json").write_text(json.dumps({"per_example": kl.tolist()}))
                (path / f"diff/{name}").mkdir(parents=True)
                scale = 1.0 if run == "grpo" else 3.0
                pd.DataFrame({"layer": np.repeat([0, 1], 2), "module": ["q_proj", "k_proj"] * 2,
                              "rel_update": scale * np.array([0.01, 0.02, 0.03, 0.04])}).to_parquet(
                    path / f"diff/{name}/step-{step}.parquet")
    (path / "tables/spec.yaml").write_text(yaml.safe_dump({"runs": runs}))
    write_pass_at_k(path / "tables/pass_at_k.tsv", written)
    return path


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path)


def test_claims_from_known_values(results):
    study = claims.Study(results)
    table = claims.claims(study, ["mini_math_l1", "mini_math_l2"], ["mini_math_l3"])
    by = {(r.claim, r.comparison, r.task): r for r in table.itertuples()}
    gain = by[("1a", "grpo - base", "mini_math_l1+mini_math_l2")]
    assert gain.estimate == pytest.approx(0.3) and gain.ci_low == pytest.approx(0.3) and gain.verdict == "pass"
    facts = by[("1b", "grpo - base", "mini_facts")]
    se = np.r_[-1, np.zeros(29)].std(ddof=1) / math.sqrt(30)
    assert facts.estimate == pytest.approx(-1 / 30) and facts.ci_low == pytest.approx(-1 / 30 - 1.959964 * se)
    assert facts.verdict == "pass"  # one item lost of 30: within noise
    ood = by[("2", "sft - grpo", "OOD mean")]
    assert ood.estimate == pytest.approx(((15 / 30 - 29 / 30) + (0 - 1)) / 2) and ood.verdict == "pass"
    kl = by[("3a", "sft_matched_lr - grpo", "KL reference")]
    assert kl.estimate == pytest.approx(0.2) and kl.verdict == "pass"
    update = by[("3b", "ln(sft_matched_lr / grpo)", "weights")]
    assert update.estimate == pytest.approx(math.log(3)) and update.verdict == "pass"
    assert by[("4", "base", "mini_instructions")].estimate == 1.0


def test_pass_at_k_rows_are_the_studys_pass_at_k_table(results):
    """Claim 5 reads pass_at_k.tsv (the tables rule's), at k = 1 and the largest k, for grpo and sft."""
    rows = pd.DataFrame(claims.pass_at_k(claims.Study(results), ["mini_math_l1"], ["grpo", "sft"]))
    assert rows[["comparison", "metric"]].values.tolist() == [
        ["grpo - base", "pass@1"], ["grpo - base", "pass@2"], ["sft - base", "pass@1"], ["sft - base", "pass@2"]]
    grpo = rows.iloc[0]
    assert (grpo.claim, grpo.estimate, grpo.n) == ("5", pytest.approx(0.3), 20)
    assert (grpo.ci_low, grpo.ci_high) == (pytest.approx(0.29), pytest.approx(0.31))  # the table's own interval
    table = pd.read_csv(results / "tables/pass_at_k.tsv", sep="\t")
    table[table.run != "grpo"].to_csv(results / "tables/pass_at_k.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="pass_at_k.tsv: no pass@k of grpo on mini_math_l1"):
        claims.pass_at_k(claims.Study(results), ["mini_math_l1"], ["grpo"])


def test_items_must_match(results):
    path = results / "eval/grpo/step-4.items.tsv"
    rows = pd.read_csv(path, sep="\t")
    rows.assign(item=rows["item"] + 1).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="mini_math_l1: grpo and base were scored on different items"):
        claims.Study(results).paired("grpo", "base", "mini_math_l1", "pass@1")


def test_claims_command_writes_the_claims_and_the_seeded_decision(results):
    out = results / "tables/claims.tsv"
    cli.main(["claims", "--results", results, "--in-domain", "mini_math_l1", "mini_math_l2",
              "--untrained", "mini_math_l3", "--out", out])
    table = pd.read_csv(out, sep="\t")
    assert set(table[table.verdict.notna()].claim) == {"1a", "1b", "2", "3a", "3b", "4"}
    assert (table[table.verdict.notna()].verdict == "pass").all()
    pass_at_k = table[table.claim == "5"]
    assert set(pass_at_k.comparison) == {"grpo - base", "sft - base"} and set(pass_at_k.metric) == {"pass@1", "pass@2"}
    assert set(pass_at_k.task) == {"mini_math_l1", "mini_math_l2", "mini_math_l3"}
    assert not (results / "tables/claims_pass_at_k.tsv").exists()  # one table per concept: pass_at_k.tsv
    assert pd.read_csv(results / "tables/claims_seeds.tsv", sep="\t").empty  # no seeds: no seeded decision


def test_claims_decided_over_seeds_that_disagree(tmp_path):
    # GRPO gains 0.3, 0.2 and -0.1 on every maths item on seeds 0, 1, 2: each seed's test of 1a is exact (no item
    # noise), two of three pass; over seeds the estimate is 0.4 / 3 with the seeds' variance 0.13 / 3 over S = 3
    results = write_results(tmp_path, seeds=(0, 1, 2), grpo_gain=(0.3, 0.2, -0.1))
    cli.main(["claims", "--results", results, "--in-domain", "mini_math_l1", "mini_math_l2",
              "--untrained", "mini_math_l3", "--out", results / "tables/claims.tsv"])
    first = pd.read_csv(results / "tables/claims.tsv", sep="\t").set_index(["claim", "task"])
    assert first.loc[("1a", "mini_math_l1+mini_math_l2"), "estimate"] == pytest.approx(0.3)  # seed 0's
    seeded = pd.read_csv(results / "tables/claims_seeds.tsv", sep="\t").set_index(["claim", "task"])
    gain = seeded.loc[("1a", "mini_math_l1+mini_math_l2")]
    half = 4.302652729911275 * math.sqrt(0.13 / 9)  # t(0.975, 2 df): the seeds carry all the noise
    assert (gain.seeds_pass, gain.n_seeds, gain.df) == (2, 3, pytest.approx(2))
    assert (gain.estimate, gain.se_items) == pytest.approx((0.4 / 3, 0), abs=1e-4)
    assert (gain.ci_low, gain.ci_high) == pytest.approx((0.4 / 3 - half, 0.4 / 3 + half), abs=1e-4)
    assert gain.verdict == "fail" and gain["estimate@seed=2"] == pytest.approx(-0.1)
    facts = seeded.loc[("1b", "mini_facts")]  # the same on every seed: the one seed's items, t with 29 df
    se = np.r_[-1, np.zeros(29)].std(ddof=1) / math.sqrt(30)
    assert (facts.seeds_pass, facts.se_seeds, facts.df, facts.verdict) == (3, 0, pytest.approx(29), "pass")
    assert facts.ci_high == pytest.approx(-1 / 30 + 2.045230 * se, abs=1e-4)
    decided = seeded[seeded.criterion != "reported"]
    assert set(decided.index.get_level_values("claim")) == {"1a", "1b", "2", "3a", "3b", "4"}
    assert (decided.drop(("1a", "mini_math_l1+mini_math_l2")).verdict == "pass").all()
    assert seeded.loc[("4", "mini_instructions"), "seeds_pass"] == 3

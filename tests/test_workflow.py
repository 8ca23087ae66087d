"""The smoke study through real Snakemake, TRL, lm-eval and safetensors, with assertions on the values it produces."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration
SMOKE = ROOT / "tests/smoke/config.yaml"


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(SMOKE), "--cores", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """The job counts of a dry run (Snakemake's 'Job stats' table)."""
    table = snakemake(workdir, "-n", *args).stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in (row.split() for row in table.splitlines()[3:])}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    snakemake(workdir)
    return workdir


def table(study, name):
    return pd.read_csv(study / "results/tables" / name, sep="\t")


def test_every_checkpoint_is_evaluated(study):
    scores = table(study, "scores.tsv")
    models = set(zip(scores.run, scores.step))
    assert models == {("base", 0), ("grpo", 2), ("grpo", 4), ("sft", 2), ("sft", 4), ("sft_frozen_mid_mlp", 4),
                      ("sft_qk_only", 4)}
    assert scores.value.between(0, 1).all()
    # final_only: the instruction probes run on the base and final checkpoints only.
    probes = scores[scores.task == "mini_instructions"]
    assert set(zip(probes.run, probes.step)) == models - {("grpo", 2), ("sft", 2)}
    # 8 problems per level, 2 samples each: pass@1 is a multiple of 1/16, its stderr that of the 8 problems' means,
    # which the samples file holds problem by problem.
    maths = scores[(scores.task == "mini_math_l1") & (scores.metric == "pass@1")].set_index(["run", "step"])
    assert ((maths.value * 16).round(9) % 1 == 0).all()
    assert set(scores[scores.task == "mini_math_l1"].metric) == {"pass@1", "pass@2", "format", "samples_correct"}
    samples = pd.read_json(study / "results/eval/base/step-0.samples.jsonl", lines=True)
    per_problem = samples[samples.task == "mini_math_l1"].metrics.map(lambda m: m["pass@1"])
    assert len(per_problem) == 8 and per_problem.mean() == pytest.approx(maths.loc[("base", 0), "value"])
    assert per_problem.std() / 8 ** 0.5 == pytest.approx(maths.loc[("base", 0), "stderr"])


def test_base_model_learned_its_facts(study):
    scores = table(study, "scores.tsv")
    base_facts = scores.query("run == 'base' and task == 'mini_facts' and metric == 'acc'").value.item()
    assert base_facts > 0.5  # 4 choices: chance is 0.25


def test_updates_follow_what_was_trainable(study):
    updates = table(study, "updates.tsv")
    assert len(updates) == 4 * 7 * 6  # layers x modules x (2 + 2 + 1 + 1 checkpoints)
    frozen = updates[updates.run == "sft_frozen_mid_mlp"]
    is_frozen_mlp = frozen.layer.isin([1, 2]) & frozen.module.isin(["gate_proj", "up_proj", "down_proj"])
    assert (frozen[is_frozen_mlp].rel_update == 0).all()
    assert (frozen[~is_frozen_mlp].rel_update > 0).all()
    qk = updates[updates.run == "sft_qk_only"]
    assert (qk[qk.module.isin(["q_proj", "k_proj"])].rel_update > 0).all()
    assert (qk[~qk.module.isin(["q_proj", "k_proj"])].rel_update == 0).all()
    sft = updates[updates.run == "sft"]
    assert (sft[sft.step == 4].rel_update.to_numpy() >= 0).all()
    # Updates accumulate: the mean update of a run grows from its first to its last checkpoint.
    for run in ("grpo", "sft"):
        means = updates[updates.run == run].groupby("step").rel_update.mean()
        assert means[4] > means[2] > 0


def test_weight_analyses_follow_what_was_trainable(study):
    update = table(study, "weights_update.tsv")
    assert len(update) == 4 * 7 * 6
    frozen = update[update.run == "sft_frozen_mid_mlp"]
    is_frozen_mlp = frozen.layer.isin([1, 2]) & frozen.module.isin(["gate_proj", "up_proj", "down_proj"])
    assert (frozen[is_frozen_mlp].unchanged_bitwise == 1).all() and (frozen[is_frozen_mlp].unchanged_tol == 1).all()
    assert frozen[is_frozen_mlp].overlap_top.isna().all()  # no updated element to place
    assert (frozen[~is_frozen_mlp].unchanged_tol < 1).all()
    qk = update[update.run == "sft_qk_only"]
    is_qk = qk.module.isin(["q_proj", "k_proj"])
    assert (qk[~is_qk].unchanged_bitwise == 1).all() and (qk[is_qk].unchanged_tol < 1).all()
    diff = table(study, "updates.tsv").merge(update, on=["run", "step", "layer", "module"])
    assert len(diff) == len(update) and diff.rel_update_y.to_numpy() == pytest.approx(diff.rel_update_x, rel=1e-6)
    spectral = table(study, "weights_spectral.tsv")
    assert set(zip(spectral.run, spectral.step)) == {("grpo", 4), ("sft", 4), ("sft_frozen_mid_mlp", 4),
                                                     ("sft_qk_only", 4)}  # weights.spectral: final
    still = spectral[(spectral.run == "sft_frozen_mid_mlp") & spectral.layer.isin([1, 2])
                     & spectral.module.isin(["gate_proj", "up_proj", "down_proj"])]
    assert len(still) == 6 and (still.nss == 0).all() and (still.angle_left_k4 == 0).all()
    assert still.stable_rank.isna().all()
    align = table(study, "weights_align.tsv")
    assert set(zip(align.run_a, align.run_b)) == {("grpo", "sft"), ("grpo", "sft_frozen_mid_mlp"),
                                                  ("grpo", "sft_qk_only")}
    with_qk = align[align.run_b == "sft_qk_only"]
    assert with_qk[~with_qk.module.isin(["q_proj", "k_proj"])].cosine.isna().all()  # a zero update has no direction
    assert with_qk[with_qk.module.isin(["q_proj", "k_proj"])].cosine.between(-1, 1).all()
    means = table(study, "weights_means.tsv")
    assert len(means) == 6 and means.stable_rank.notna().sum() == 4


def test_forgetting_predictors(study):
    fits = table(study, "forgetting.tsv")
    assert {"kl_per_token", "rel_update", "unchanged_tol", "stable_rank"} <= set(fits.predictor)
    assert list(fits.r2.dropna()) == sorted(fits.r2.dropna(), reverse=True)
    # instructions run on final checkpoints only: the 4 finals have every out-of-domain task, steps 2 do not
    assert (fits.checkpoints_left_out == 2).all() and (fits.set_index("predictor").n.loc["kl_per_token"] == 4)
    assert fits.r2.between(0, 1).all()
    points = table(study, "forgetting_points.tsv")
    assert set(zip(points.run, points.step)) == {("grpo", 4), ("sft", 4), ("sft_frozen_mid_mlp", 4),
                                                 ("sft_qk_only", 4)}


def test_summary_and_ratio(study):
    summary = table(study, "summary.tsv").set_index("run")
    assert math.isnan(summary.loc["base", "mean_rel_update"])
    updates = table(study, "updates.tsv")
    final = updates[updates.step == 4].groupby("run").rel_update.mean()
    assert summary.loc["sft", "mean_rel_update"] == pytest.approx(final["sft"], rel=1e-9)
    ratios = table(study, "ratios.tsv")
    row = ratios[(ratios.numerator == "sft") & (ratios.denominator == "grpo")]
    assert row.ratio.item() == pytest.approx(final["sft"] / final["grpo"], rel=1e-9)
    authors = table(study, "authors_comparison.tsv").set_index(["run", "quantity"])
    beside = authors.loc[("sft", "update ratio to grpo (GRPOv01.14)")]
    assert beside.ours == pytest.approx(row.ratio.item(), rel=1e-9)
    assert beside.authors == pytest.approx(0.0537 / 0.00123)


def test_kl_of_every_checkpoint(study):
    kl = table(study, "kl.tsv")
    assert len(kl) == 6 and (kl.kl_per_token > 0).all() and (kl.n_examples == 24).all()  # 8 problems x 3 levels
    assert (kl.kl_per_sequence_ours > 10 * kl.kl_per_token).all()  # summed over tens of tokens vs averaged


def test_grpo_logged_scored_completions(study):
    files = sorted((study / "results/runs/grpo/completions").glob("*.parquet"))
    assert len(files) == 4
    assert [len(pd.read_parquet(f)) for f in files] == [16] * 4  # global_batch_size, whatever the micro-batch
    assert "16 per step = 1 processes x 8 per device x 2 accumulation" in (study / "logs/train/grpo.log").read_text()
    logged = pd.concat(pd.read_parquet(f) for f in files)
    assert set(logged.accuracy_reward.dropna().unique()) <= {0.0, 1.0}
    assert set(logged.format_reward.unique()) <= {0.0, 1.0}
    assert not (study / "results/runs/grpo/state").exists()  # trainer state is dropped once the run is done


def test_checkpoints_are_loadable_hf_folders(study):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(study / "results/runs/sft/checkpoints/step-2")
    assert model.config.num_hidden_layers == 4
    assert (study / "results/runs/sft/checkpoints/step-2/model.safetensors").is_file()


def test_report_and_rerun_behaviour(study):
    for name in ("update_heatmaps", "update_trajectories", "scores_final", "scores_by_step", "kl_trajectories",
                 "weights_heatmaps", "weights_trajectories", "weights_alignment", "forgetting", "differences_final",
                 "pass_at_k"):
        assert (study / f"results/figures/{name}.png").stat().st_size > 10_000
    assert "Nothing to be done" in snakemake(study, "-n").stdout
    # Forcing one checkpoint's evaluation reruns it and what depends on it, nothing else.
    assert planned_jobs(study, "results/tables/summary.tsv", "--forcerun", "results/eval/grpo/step-2.tsv") == {
        "evaluate": 1, "tables": 1, "total": 2}
    # Forcing a rule reruns its jobs and their dependants: the SFT runs (2 + 1 + 1 checkpoints), not GRPO.
    # The weight analyses: every SFT checkpoint, each SFT run's final one (spectral), each GRPO x SFT pair.
    assert planned_jobs(study, "--forcerun", "train_sft") == {
        "train_sft": 3, "diff": 4, "evaluate": 4, "kl": 4, "weights_update": 4, "weights_spectral": 3,
        "weights_align": 3, "tables": 1, "weight_tables": 1, "forgetting": 1, "plots": 1, "weight_plots": 1,
        "findings": 1, "reference_check": 1, "throughput": 1, "all": 1, "total": 34}
    report = study / "report.html"
    snakemake(study, "--report", str(report))
    html = report.read_text(errors="replace")
    assert "update_heatmaps.png" in html and "scores_final.png" in html


def test_bad_config_fails_at_once_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("sft_qk_only: {inherit: sft,", "sft_qk_only: {inherit: sfft,"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(bad), "-n"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "runs.sft_qk_only.inherit: no run named 'sfft'" in proc.stdout + proc.stderr


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--lint"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tables_carry_intervals_and_paired_differences(study):
    scores = table(study, "scores.tsv")
    maths = scores[(scores.task == "mini_math_l1") & (scores.metric == "pass@1")]
    # 8 problems, 2 samples each: a problem scores 0, 1/2 or 1, so the interval is normal over the 8 problem means.
    assert (maths.n_items == 8).all() and set(maths.interval) == {"normal"}
    assert ((maths.ci_low <= maths.value) & (maths.value <= maths.ci_high)).all()
    facts = scores[(scores.task == "mini_facts") & (scores.metric == "acc")]
    # 0/1 items scored once: Wilson's interval, which never collapses to a point (even at 0/n or n/n)
    assert set(facts.interval) == {"wilson"} and ((facts.ci_high - facts.ci_low) > 0.01).all()
    probes = scores[(scores.task == "mini_instructions") & (scores.metric == "prompt_level_strict_acc")]
    assert set(probes.interval) == {"wilson"}  # 0/1 items, one greedy answer each
    curves = table(study, "pass_at_k.tsv").set_index(["run", "step", "task", "k"])
    for (run, step), row in maths.set_index(["run", "step"]).iterrows():
        assert curves.loc[(run, step, "mini_math_l1", 1), "pass_at_k"] == pytest.approx(row.value)
        assert curves.loc[(run, step, "mini_math_l1", 2), "pass_at_k"] >= row.value
    diffs = table(study, "differences.tsv")
    vs_base = diffs[diffs.comparison == "vs base"]
    checkpoints = {("grpo", 2), ("grpo", 4), ("sft", 2), ("sft", 4), ("sft_frozen_mid_mlp", 4), ("sft_qk_only", 4)}
    assert set(zip(vs_base.run, vs_base.step)) == checkpoints
    facts = vs_base[vs_base.task == "mini_facts"].set_index(["run", "step"])
    summary = table(study, "summary.tsv").set_index("run")
    assert facts.loc[("sft", 4), "diff"] == pytest.approx(summary.loc["sft", "mini_facts"]
                                                           - summary.loc["base", "mini_facts"])
    assert (facts.low <= facts["diff"]).all() and (facts["diff"] <= facts.high).all()
    ood = vs_base[vs_base.task == "out-of-domain mean"].set_index(["run", "step"])
    # the probes run on final checkpoints only: the out-of-domain mean exists there only
    assert set(ood.index) == {("grpo", 4), ("sft", 4), ("sft_frozen_mid_mlp", 4), ("sft_qk_only", 4)}
    assert summary.loc["sft", "out_of_domain_delta"] == pytest.approx(ood.loc[("sft", 4), "diff"])
    assert set(diffs[diffs.comparison == "run vs run"].task) >= {"mini_facts", "out-of-domain mean"}


def test_three_seeds_of_the_miniature_plan_the_claims(tmp_path):
    """`snakemake -n --profile profiles/local --config train_seeds=3` (in an empty folder) decides the claims."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(ROOT / "config/config.yaml"), "--profile",
                           str(ROOT / "profiles/local"), "--config", "train_seeds=3", "-n"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    stats = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {row.split()[0]: int(row.split()[1]) for row in stats.splitlines()[3:]}
    assert (jobs["claims"], jobs["train_grpo"], jobs["train_sft"]) == (1, 3, 12)
    assert "results/tables/claims_seeds.tsv" in out and "results/runs/grpo-seed2/spec.yaml" in out


def test_seeds_expand_into_runs_of_the_dag(tmp_path):
    seeded = tmp_path / "seeds.yaml"
    seeded.write_text(SMOKE.read_text() + "train_seeds: [1, 2]\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(seeded), "-n"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for run in ("grpo-seed1", "grpo-seed2", "sft-seed1", "sft_qk_only-seed2"):
        assert f"results/runs/{run}/spec.yaml" in out
    assert "results/runs/grpo/spec.yaml" not in out
    stats = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {row.split()[0]: int(row.split()[1]) for row in stats.splitlines()[3:]}
    assert (jobs["train_grpo"], jobs["train_sft"], jobs["evaluate"]) == (2, 6, 13)  # 1 base + 2 x (2+2+1+1)


def test_report_builds_without_docutils_errors_and_opens_on_the_findings(study):
    """Snakemake's HTML report of the smoke study: every caption renders (docutils prints `(ERROR/3)` or
    `(WARNING/2)` on stderr and keeps going otherwise), and its first paragraph links the findings page, which holds
    each run's change from the base as summary.tsv gives it."""
    proc = snakemake(study, "--report", str(study / "report.html"))
    assert not [line for line in (proc.stdout + proc.stderr).splitlines() if "(ERROR/" in line or "(WARNING/" in line]
    report = (study / "report.html").read_text()
    assert "What the study found" in report and "findings.html" in report
    from scalpel.report.findings import interval

    page = (study / "results/report/findings.html").read_text()
    summary = table(study, "summary.tsv").set_index("run")
    sft = summary.loc["sft"]
    assert f"{sft.out_of_domain_delta:+.3f} [{sft.out_of_domain_delta_low:+.3f}, " in page
    assert page.count("data:image/png;base64,") == 4  # differences, scores, update heatmaps, forgetting (no sweep)
    forgetting = table(study, "forgetting.tsv").set_index("predictor")
    kl = forgetting.loc["kl_per_token"]
    assert "What predicts forgetting" in page and interval(kl.r2, kl.r2_low, kl.r2_high).lstrip("+") in page
    assert "<b>inconclusive</b>" in page  # the smoke study has fewer than 20 checkpoints


def test_throughput_of_the_smoke_study_and_its_projection(study):
    """The smoke study projected onto its own config (its first config file): training's projection recomputed by
    hand from each log history; evaluation and KL, whose lengths are then those measured, add up to what was
    measured. On the Slurm profile's 8 GPUs GRPO's 16 completions a step are 2 per process, against 16 in the one
    CPU process measured; SFT (no global_batch_size) keeps 8 per process."""
    import json
    import statistics

    rows = table(study, "throughput.tsv").set_index(["kind", "rule", "run", "step"], drop=False)
    projected = rows[rows.kind == "projection"].set_index(["rule", "run"])
    measured = rows[rows.kind == "measured"]
    for run, method, steps, saves, share in (("grpo", "grpo", 4, 2, 2 / 16), ("sft", "sft", 4, 2, 1),
                                             ("sft_qk_only", "sft", 4, 1, 1)):
        logged = [e for e in json.loads((study / f"results/runs/{run}/trainer_log.json").read_text()) if "step_s" in e]
        assert [e["step"] for e in logged] == [1, 2, 3, 4] and "setup_s" in logged[0]
        assert {(e["batch"], e["processes"]) for e in logged} == {(16 if method == "grpo" else 8, 1)}
        step_s = statistics.median(e["step_s"] for e in logged[1:]) * share
        save_s = [e["save_s"] for e in logged if "save_s" in e]
        assert len(save_s) == saves
        row = projected.loc[(f"train_{method}", run)]
        assert row.seconds == pytest.approx(logged[0]["setup_s"] + steps * step_s + saves * sum(save_s) / saves)
        assert row.gpus == 8 and row.gpu_hours == pytest.approx(8 * row.seconds / 3600)
        if method == "grpo":  # 16 completions a step, their mean length as TRL logged it, over the generation time
            for e in logged:
                assert e["generated_tokens"] == pytest.approx(e["completions/mean_length"] * 16)
                assert e["generated_tokens_per_s"] == pytest.approx(e["generated_tokens"] / e["generate_s"])
    for rule in ("evaluate", "kl"):
        assert projected.loc[rule].seconds.sum() == pytest.approx(measured[measured.rule == rule].seconds.sum())
    assert len(measured[measured.rule == "evaluate"]) == 7 and (measured.generated_tokens_per_s.dropna() > 0).all()
    assert projected.loc[("all", "all")].gpu_hours == pytest.approx(projected.drop(("all", "all")).gpu_hours.sum())

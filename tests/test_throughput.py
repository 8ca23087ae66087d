"""The throughput table's arithmetic on hand-made rates whose projection is known by hand."""
import pandas as pd
import pytest
from scalpel.report import throughput

GRPO_LOG = [{"step": 1, "step_s": 20.0, "steps_timed": 1, "batch": 112, "processes": 8, "tokens_per_s": 1000.0,
             "generated_tokens_per_s": 500.0, "setup_s": 100.0},
            {"step": 2, "step_s": 10.0, "steps_timed": 1, "batch": 112, "processes": 8, "tokens_per_s": 2000.0,
             "generated_tokens_per_s": 800.0, "save_s": 30.0},
            {"step": 2, "train_runtime": 160.0}]
SFT_LOG = [{"step": 1, "step_s": 6.0, "steps_timed": 1, "batch": 112, "processes": 8, "tokens_per_s": 900.0,
            "setup_s": 50.0},
           {"step": 2, "step_s": 4.0, "steps_timed": 1, "batch": 112, "processes": 8, "tokens_per_s": 1100.0,
            "save_s": 20.0}]
FULL = {"model": {"base": "x"}, "runs": {
    "grpo": {"method": "grpo", "steps": 571, "checkpoints": 20, "global_batch_size": 448},
    "sft": {"method": "sft", "steps": 462, "checkpoints": 20, "global_batch_size": 448},
    "sft_1epoch": {"inherit": "sft", "steps": 154}},
    "eval": {"tasks": {"math": ["a"], "knowledge": ["b"]}, "final_only": ["knowledge"], "samples": {"final": {"a": 4}}},
    "kl": {"limit": None}}
GPUS = {"train_grpo": 8, "train_sft": 8, "evaluate": 1, "kl": 1}


def _lm_eval(load_s, a_seconds, b_seconds):
    """An .lm_eval.json's part the table reads: task a (2 of 30 items, 4 samples), group b of b_x and b_y (1 of 50
    items each, one sample)."""
    tasks = {"a": {"items": 2, "items_full": 30, "samples": 4, "seconds": a_seconds},
             "b_x": {"items": 1, "items_full": 50, "samples": 1, "seconds": b_seconds / 2},
             "b_y": {"items": 1, "items_full": 50, "samples": 1, "seconds": b_seconds / 2}}
    return {"group_subtasks": {"b": ["b_x", "b_y"]}, "throughput": {
        "load_s": load_s, "generate_s": a_seconds + b_seconds, "generated_tokens_per_s": 42.0, "tasks": tasks}}


@pytest.fixture
def table():
    train = pd.DataFrame([throughput.train_rates(GRPO_LOG, {"name": "grpo", "method": "grpo"}),
                          throughput.train_rates(SFT_LOG, {"name": "sft", "method": "sft"})])
    parts = [throughput.eval_rates(_lm_eval(10.0, 8.0, 2.0), "base", 0),
             throughput.eval_rates(_lm_eval(14.0, 16.0, 6.0), "sft", 2)]
    jobs = pd.DataFrame([job for job, _ in parts])
    tasks = pd.DataFrame([row for _, rows in parts for row in rows])
    kl = pd.DataFrame([{"run": "sft", "step": 2, "load_s": 5.0, "seconds": 4.0, "n_examples": 8, "n_tokens": 800},
                       {"run": "grpo", "step": 2, "load_s": 7.0, "seconds": 8.0, "n_examples": 8, "n_tokens": 400}])
    rows = throughput.measured_rows(train, jobs, kl, GPUS) + throughput.project(train, jobs, tasks, kl, FULL, GPUS, 500)
    return pd.DataFrame(rows, columns=throughput.COLUMNS).set_index(["kind", "rule", "run"])


def test_measured_rates(table):
    grpo = table.loc[("measured", "train_grpo", "grpo")]
    # set-up 100 + steps 20 + 10 + save 30; the first step is left out of the rates
    assert (grpo.seconds, grpo.step_s, grpo.tokens_per_s, grpo.generated_tokens_per_s) == (160, 10, 2000, 800)
    assert grpo.gpu_hours == pytest.approx(8 * 160 / 3600)
    assert table.loc[("measured", "kl", "grpo")].tokens_per_s == 400 / 8
    assert table.loc[("measured", "evaluate", "base")].seconds == 10 + 8 + 2


def test_training_projection_by_hand(table):
    grpo = table.loc[("projection", "train_grpo", "grpo")]
    # 448 / 8 processes = 56 sequences each, against 112 / 8 = 14 measured: a step takes 4 times as long
    assert grpo.seconds == pytest.approx(100 + 571 * 10 * 4 + 20 * 30)  # 23,540 s
    assert grpo.gpu_hours == pytest.approx(8 * 23540 / 3600) and grpo.gpus == 8
    sft = table.loc[("projection", "train_sft", "sft")]
    assert sft.seconds == pytest.approx(50 + 462 * 4 * 4 + 20 * 20)
    one_epoch = table.loc[("projection", "train_sft", "sft_1epoch")]  # not measured: sft's rates, its own length
    assert one_epoch.seconds == pytest.approx(50 + 154 * 16 + 400) and "sft runs" in one_epoch.basis


def test_evaluation_and_kl_projection_by_hand(table):
    # a: (8 + 16) s over 2 x (2 items x 4 samples) = 1.5 s; b: (2 + 6) s over 2 x 2 items = 2 s; load (10 + 14) / 2
    base = 12 + 1.5 * 30 * 4 + 2 * 100
    assert table.loc[("projection", "evaluate", "base")].seconds == pytest.approx(base)  # 392 s
    intermediate = 12 + 1.5 * 30 * 1  # AIME-like a only, one sample
    grpo = table.loc[("projection", "evaluate", "grpo")]
    assert grpo.jobs == 20 and grpo.seconds == pytest.approx(19 * intermediate + base)
    kl = table.loc[("projection", "kl", "sft")]  # load 6 s + 500 examples x 12 s / 16 examples
    assert kl.jobs == 20 and kl.seconds == pytest.approx(20 * (6 + 500 * 0.75))
    total = table.loc[("projection", "all", "all")]
    projected = table.loc["projection"].drop(("all", "all"))
    assert total.gpu_hours == pytest.approx(projected.gpu_hours.sum()) and total.gpu_hours > 52
    assert set(table.index.get_level_values(0)) == {"measured", "projection"}


def test_a_task_not_measured_is_not_projected():
    jobs = pd.DataFrame([{"run": "base", "step": 0, "load_s": 1.0, "seconds": 2.0, "generated_tokens_per_s": 1.0}])
    tasks = pd.DataFrame([{"task": "a", "run": "base", "step": 0, "seconds": 1.0, "item_samples": 1, "items_full": 1}])
    train = pd.DataFrame([throughput.train_rates(SFT_LOG, {"name": "sft", "method": "sft"})])
    kl = pd.DataFrame([{"run": "sft", "step": 2, "load_s": 5.0, "seconds": 4.0, "n_examples": 8, "n_tokens": 8}])
    full = {**FULL, "runs": {"sft": FULL["runs"]["sft"]}}
    rows = {(r["rule"], r["run"]): r for r in throughput.project(train, jobs, tasks, kl, full, GPUS, 10)}
    assert pd.isna(rows[("evaluate", "base")]["seconds"]) and rows[("evaluate", "base")]["basis"] == "not measured: b"
    assert "2 not projected" in rows[("all", "all")]["basis"]


def test_gpus_per_rule_from_the_slurm_profile():
    import yaml
    from conftest import ROOT

    gpus = throughput.slurm_gpus(yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text()))
    assert {r: gpus[r] for r in GPUS} == GPUS and gpus["weights_update"] == 0 and "diff" not in gpus  # diff: local


def test_files_written_before_the_rates_were_logged_are_left_out(tmp_path, capsys):
    """A study run before this table: its histories, evaluations and KL files carry no rates; nothing is projected
    from them, and the table still is written, saying so."""
    import json

    (tmp_path / "runs/sft").mkdir(parents=True)
    (tmp_path / "runs/sft/trainer_log.json").write_text(json.dumps([{"step": 1, "loss": 1.0}]))
    (tmp_path / "runs/sft/spec.yaml").write_text("{name: sft, method: sft}")
    (tmp_path / "eval/base").mkdir(parents=True)
    (tmp_path / "eval/base/step-0.lm_eval.json").write_text(json.dumps({"results": {}}))
    (tmp_path / "kl.json").write_text(json.dumps({"run": "sft", "step": 2, "n_examples": 8}))
    table = throughput.throughput_table([tmp_path / "runs/sft/trainer_log.json"], [tmp_path / "eval/base/step-0.tsv"],
                                        [tmp_path / "kl.json"], {**FULL, "runs": {"sft": FULL["runs"]["sft"]}}, {}, 10)
    assert "left out, written without throughput" in capsys.readouterr().out
    assert set(table.kind) == {PROJECTION} and table[table.rule != "all"].seconds.isna().all()
    assert table[table.rule == "all"].basis.item() == "sum of the projected rows (4 not projected)"


PROJECTION = throughput.PROJECTION

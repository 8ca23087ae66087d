import copy

import pytest
import yaml
from conftest import ROOT
from scalpel import config as study_config
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def default_config():
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    validate(cfg, schema=SCHEMA)
    return cfg


def test_checkpoint_steps_match_trl_fractional_save_steps():
    # The authors' GRPO (571 steps, save every 5%) and SFT (462 steps) checkpoints.
    grpo = study_config.checkpoint_steps(571, 20)
    assert grpo[:3] == [29, 58, 87] and grpo[-2:] == [551, 571] and len(grpo) == 20
    sft = study_config.checkpoint_steps(462, 20)
    assert sft[0] == 24 and sft[-2:] == [456, 462] and len(sft) == 20
    assert study_config.checkpoint_steps(40, 4) == [10, 20, 30, 40]


def test_schema_fills_defaults():
    cfg = {"runs": {"g": {"method": "grpo", "steps": 4, "checkpoints": 2}}}
    validate(cfg, schema=SCHEMA)
    assert cfg["model"]["base"] == "build"
    assert cfg["launch"]["deepspeed"]["zero_stage"] == 3
    assert cfg["data"]["synthetic"]["max_operand"] == 9
    assert cfg["diff"]["dtype_mismatch"] == "cast"


@pytest.mark.parametrize(
    "mutate, culprit",
    [
        (lambda c: c["model"].update(dtyp="float32"), "dtyp"),
        (lambda c: c["runs"]["grpo"].update(method="ppo"), "ppo"),
        (lambda c: c["runs"]["grpo"].update(steps=0), "0"),
        (lambda c: c["launch"]["deepspeed"].update(zero_stage=1), "1"),
        (lambda c: c.update(diff={"dtype_mismatch": "round"}), "round"),
        (lambda c: c["runs"].update({"bad name": {"method": "sft"}}), "bad name"),
    ],
)
def test_schema_rejects_and_names_culprit(default_config, mutate, culprit):
    mutate(default_config)
    with pytest.raises(WorkflowError, match=culprit):
        validate(default_config, schema=SCHEMA)


def test_resolve_inherits_and_merges_defaults(default_config):
    runs = study_config.resolve_runs(default_config)
    frozen = runs["sft_frozen_mid_mlp"]
    assert frozen["method"] == "sft" and frozen["freeze"] == ["model.layers.{2..3}.mlp.*"]
    assert frozen["args"]["learning_rate"] == default_config["train_defaults"]["sft"]["learning_rate"]
    assert "freeze" not in runs["sft"]
    assert runs["grpo"]["args"]["reward_weights"] == [1.0, 0.2]
    assert runs["grpo"]["checkpoint_steps"] == [60, 120]
    matched = runs["sft_matched_lr"]  # the authors' SFTv02.00: GRPO's learning rate and steps
    assert matched["args"]["learning_rate"] == runs["grpo"]["args"]["learning_rate"]
    assert matched["steps"] == runs["grpo"]["steps"]
    assert runs["sft"]["args"]["learning_rate"] == 50 * runs["grpo"]["args"]["learning_rate"]


@pytest.mark.parametrize(
    "runs, message",
    [
        ({"a": {"inherit": "nope"}}, r"runs\.a\.inherit: no run named 'nope'"),
        ({"a": {"inherit": "b"}, "b": {"inherit": "a"}}, "cycle"),
        ({"a": {"method": "sft", "steps": 3}}, r"runs\.a\.checkpoints is required"),
        ({"a": {"method": "sft", "steps": 3, "checkpoints": 5}}, r"runs\.a: checkpoints \(5\) exceeds steps \(3\)"),
        ({"a": {"method": "sft", "steps": 3, "checkpoints": 1, "freeze": ["x"], "train_only": ["y"]}}, "not both"),
        ({"a": {"method": "sft", "steps": 3, "checkpoints": 1, "args": {"max_steps": 9}}}, r"runs\.a\.args\.max_steps"),
    ],
)
def test_resolve_errors_name_the_key(runs, message):
    with pytest.raises(study_config.ConfigError, match=message):
        study_config.resolve_runs({"runs": runs})


def test_final_only_suites(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["eval"]["final_only"] = ["instructions"]
    assert "instructions" in study_config.eval_suites(cfg, final=True)
    assert study_config.eval_suites(cfg, final=False) == ["math", "knowledge"]
    cfg["eval"]["final_only"] = ["nope"]
    with pytest.raises(study_config.ConfigError, match="eval.final_only.*nope"):
        study_config.eval_suites(cfg, final=True)


@pytest.mark.parametrize("processes, expected", [(7, (16, 4)), (8, (14, 4)), (16, (14, 2)), (1, (16, 28)),
                                                 (56, (8, 1))])
def test_micro_batches_keep_448_per_step_on_any_allocation(processes, expected):
    per_device, accumulation = study_config.micro_batches(448, processes, 16, num_generations=28)
    assert (per_device, accumulation) == expected
    assert per_device * accumulation * processes == 448


def test_micro_batches_name_the_key_when_the_allocation_cannot_fit():
    with pytest.raises(study_config.ConfigError, match=r"runs.grpo.global_batch_size \(448\).*6 training processes"):
        study_config.micro_batches(448, 6, 16, key="runs.grpo.global_batch_size")
    with pytest.raises(study_config.ConfigError, match="multiple of num_generations"):
        study_config.micro_batches(450, 2, 16, num_generations=28)


def test_derived_batch_settings_cannot_also_be_given(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["runs"]["sft"].update(global_batch_size=32, args={"gradient_accumulation_steps": 2})
    with pytest.raises(study_config.ConfigError, match="runs.sft.args.gradient_accumulation_steps is derived"):
        study_config.resolve_runs(cfg)


def test_seeds_expand_a_run_into_one_run_per_seed(default_config):
    default_config["runs"]["grpo"]["seeds"] = [1, 2, 3]
    default_config["train_seeds"] = [7]
    runs = study_config.resolve_runs(default_config)
    grpo = [name for name in runs if runs[name]["group"] == "grpo"]
    assert grpo == ["grpo-seed1", "grpo-seed2", "grpo-seed3"]
    assert [runs[n]["args"]["seed"] for n in grpo] == [1, 2, 3] == [runs[n]["seed"] for n in grpo]
    # One seed (train_seeds here) keeps the name and sets TRL's seed.
    assert runs["sft"]["group"] == "sft" and runs["sft"]["args"]["seed"] == 7
    assert runs["grpo-seed2"]["checkpoint_steps"] == runs["grpo-seed1"]["checkpoint_steps"]
    del default_config["runs"]["grpo"]["seeds"]
    default_config["train_seeds"] = 3  # a count: seeds 0, 1, 2 (--config train_seeds=3)
    validate(default_config, schema=SCHEMA)
    assert [n for n in study_config.resolve_runs(default_config) if n.startswith("grpo")] == [
        "grpo-seed0", "grpo-seed1", "grpo-seed2"]


def test_seed_names_may_not_clash_and_seeds_not_repeat(default_config):
    default_config["runs"]["grpo"]["seeds"] = [1, 1]
    with pytest.raises(study_config.ConfigError, match=r"runs.grpo.seeds .* repeats a seed"):
        study_config.resolve_runs(default_config)
    default_config["runs"]["grpo"]["seeds"] = [0, 1]
    default_config["runs"]["grpo-seed1"] = {"inherit": "sft"}
    with pytest.raises(study_config.ConfigError, match="runs.grpo-seed1: the name of seed 1 of run grpo"):
        study_config.resolve_runs(default_config)


def test_eval_samples_differ_for_final_and_intermediate_checkpoints(default_config):
    default_config["eval"]["samples"] = {"final": {"mini_math_l1": 16, "mini_math_l2": 1},
                                         "intermediate": {"mini_math_l1": 4}}
    assert study_config.eval_samples(default_config, final=True) == {"mini_math_l1": 16}
    assert study_config.eval_samples(default_config, final=False) == {"mini_math_l1": 4}
    default_config["eval"]["samples"]["final"]["aime24"] = 8
    with pytest.raises(study_config.ConfigError, match=r"eval.samples.final names tasks .* \['aime24'\]"):
        study_config.eval_suites(default_config, final=True)


def test_in_domain_defaults_to_the_math_suite_and_names_unknown_suites(default_config):
    assert study_config.task_domains(default_config)["in_domain"] == ["mini_math_l1", "mini_math_l2", "mini_math_l3"]
    default_config["eval"]["tasks"] = {"knowledge": ["mini_facts"]}  # no maths suite: nothing in domain, no error
    default_config["eval"]["final_only"], default_config["eval"]["primary_metrics"] = [], {}
    default_config["eval"]["samples"] = {}
    study_config.eval_suites(default_config, final=True)
    assert study_config.task_domains(default_config) == {"in_domain": [], "out_of_domain": ["mini_facts"]}
    default_config["eval"]["in_domain"] = ["maths"]
    with pytest.raises(study_config.ConfigError, match=r"eval.in_domain names unknown suites: \['maths'\]"):
        study_config.eval_suites(default_config, final=True)


def test_sweep_expands_a_run_into_one_named_run_per_combination(default_config):
    default_config["runs"]["sft_matched_lr"]["sweep"] = {"learning_rate": [1.0e-5, 2.5e-3], "steps": [40, 120]}
    validate(default_config, schema=SCHEMA)
    runs = study_config.resolve_runs(default_config)
    swept = [name for name in runs if runs[name]["sweep_of"] == "sft_matched_lr"]
    assert swept == ["sft_matched_lr-lr1e-05-steps40", "sft_matched_lr-lr1e-05-steps120",
                     "sft_matched_lr-lr0p0025-steps40", "sft_matched_lr-lr0p0025-steps120"]
    one = runs["sft_matched_lr-lr0p0025-steps40"]
    assert one["swept"] == {"learning_rate": 2.5e-3, "steps": 40} and one["group"] == one["name"]
    assert one["args"]["learning_rate"] == 2.5e-3 and one["steps"] == 40 and one["checkpoint_steps"] == [20, 40]
    # The run's own args (per_device_train_batch_size 32) and what it inherits from sft and train_defaults stay.
    assert one["args"]["per_device_train_batch_size"] == 32 and one["method"] == "sft"
    assert one["args"]["max_length"] == default_config["train_defaults"]["sft"]["max_length"]
    assert "sft_matched_lr" not in runs and runs["sft"]["swept"] == {} and runs["sft"]["sweep_of"] == "sft"
    # A run inheriting from a swept run does not inherit the sweep.
    default_config["runs"]["child"] = {"inherit": "sft_matched_lr"}
    assert [n for n in study_config.resolve_runs(default_config) if n.startswith("child")] == ["child"]


def test_sweeps_and_seeds_combine(default_config):
    default_config["runs"]["grpo"].update(sweep={"beta": [0.0, 0.04], "num_generations": [4]}, seeds=[0, 1])
    runs = study_config.resolve_runs(default_config)
    grpo = [name for name in runs if runs[name]["sweep_of"] == "grpo"]
    assert grpo == ["grpo-beta0-gen4-seed0", "grpo-beta0-gen4-seed1", "grpo-beta0p04-gen4-seed0",
                    "grpo-beta0p04-gen4-seed1"]
    one = runs["grpo-beta0p04-gen4-seed1"]
    assert one["group"] == "grpo-beta0p04-gen4" and one["seed"] == one["args"]["seed"] == 1
    assert one["args"]["beta"] == 0.04 and one["args"]["num_generations"] == 4
    assert one["swept"] == {"beta": 0.04, "num_generations": 4}


@pytest.mark.parametrize("sweep, message", [
    ({"learning_rat": [1e-5]}, r"runs.grpo.sweep.learning_rat: not a run setting .* nor a TRL argument of grpo"),
    ({"learning_rate": []}, r"runs.grpo.sweep.learning_rate: give a non-empty list"),
    ({"learning_rate": [1e-5, 1.0e-5]}, r"runs.grpo.sweep.learning_rate repeats a value"),
    ({"seed": [1, 2]}, r"runs.grpo.sweep.seed: not sweepable \(use runs.<name>.seeds\)"),
    ({"max_steps": [10]}, r"runs.grpo.sweep.max_steps: not sweepable \(sweep steps\)"),
    ({"checkpoints": [200]}, r"runs.grpo-ckpt200: checkpoints \(200\) exceeds steps \(120\)"),
])
def test_sweep_errors_name_the_key(default_config, sweep, message):
    default_config["runs"]["grpo"]["sweep"] = sweep
    with pytest.raises(study_config.ConfigError, match=message):
        study_config.resolve_runs(default_config)


def test_swept_names_may_not_clash(default_config):
    default_config["runs"]["grpo"]["sweep"] = {"learning_rate": [1e-5, 2e-5]}
    default_config["runs"]["grpo-lr2e-05"] = {"inherit": "sft"}
    with pytest.raises(study_config.ConfigError,
                       match=r"runs.grpo-lr2e-05: the name of sweep \{'learning_rate': 2e-05\} of run grpo is already"):
        study_config.resolve_runs(default_config)
    del default_config["runs"]["grpo-lr2e-05"]
    default_config["runs"]["grpo"]["seeds"] = [0, 1]
    default_config["runs"]["grpo-lr1e-05-seed1"] = {"inherit": "sft"}
    with pytest.raises(study_config.ConfigError, match=r"runs.grpo-lr1e-05-seed1: the name of seed 1 of sweep"):
        study_config.resolve_runs(default_config)

"""Plan-time checks: TRL argument names and freeze/train_only patterns fail `snakemake -n`, not the training job."""
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, TINY_BUILD, write_tiny_study
from scalpel import config as study_config
from scalpel import preflight
from snakemake.utils import validate
from test_hub import _cache_repo

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
SMOKE = ROOT / "tests/smoke/config.yaml"


def _load(path):
    cfg = yaml.safe_load(path.read_text())
    validate(cfg, schema=SCHEMA)
    return cfg


@pytest.fixture(scope="module")
def known():
    return preflight.trl_arguments()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_study(folder)
    return folder / "base"


@pytest.mark.parametrize("path", [ROOT / "config/config.yaml", ROOT / "config/paper.yaml", SMOKE],
                         ids=lambda p: p.name if p != SMOKE else "smoke")
def test_the_shipped_configs_pass(path, known):
    cfg = _load(path)
    assert preflight.trl_argument_errors(cfg, study_config.resolve_runs(cfg), known) == []


def test_the_recorded_trl_arguments_are_the_installed_trls():
    """Planning reads the record, not TRL; after a TRL upgrade this fails until the record is rewritten."""
    record = yaml.safe_load(preflight.TRL_RECORD.read_text())
    from importlib.metadata import version

    assert record["trl"] == version("trl")
    assert {m: set(record[m]) for m in preflight.TRL_CLASSES} == preflight.installed_trl_arguments()


def test_planning_imports_neither_trl_nor_transformers_for_the_miniature():
    code = ("import sys, yaml; from scalpel import config, preflight; cfg = yaml.safe_load(open(sys.argv[1])); "
            "preflight.check(cfg, config.resolve_runs(cfg)); print(sorted(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code, str(SMOKE)], capture_output=True, text=True, check=True,
                            cwd=ROOT / "workflow").stdout
    assert [m for m in ("trl", "transformers", "torch") if f"'{m}'" in loaded] == []


def test_trl_arguments_are_the_dataclass_fields(known):
    assert {"learning_rate", "num_generations", "beta", "loss_type"} <= known["grpo"]
    assert {"learning_rate", "max_length", "completion_only_loss"} <= known["sft"]
    assert "num_generations" not in known["sft"] and "_n_gpu" not in known["sft"]  # not an init argument


def test_misspelt_and_misplaced_trl_arguments_name_their_key(known):
    cfg = _load(SMOKE)
    cfg["train_defaults"]["grpo"]["learnin_rate"] = cfg["train_defaults"]["grpo"].pop("learning_rate")
    cfg["runs"]["sft_qk_only"]["args"] = {"num_generations": 4, "zzz": 1}  # a GRPO argument in an SFT run
    errors = preflight.trl_argument_errors(cfg, study_config.resolve_runs(cfg), known)
    assert errors == [
        "train_defaults.grpo.learnin_rate: not a GRPOConfig argument (did you mean learning_rate?)",
        "runs.sft_qk_only.args.num_generations: not a SFTConfig argument",
        "runs.sft_qk_only.args.zzz: not a SFTConfig argument",
    ]


def test_the_miniatures_names_are_the_built_models(tiny_model):
    """The names the check uses are those of the model the base_model rule builds (same config builder)."""
    from transformers import AutoModelForCausalLM

    cfg = _load(SMOKE)
    cfg["model"]["build"] = {**cfg["model"]["build"], **TINY_BUILD}
    names, label = preflight.parameter_names(cfg)
    built = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert names == [n for n, _ in built.named_parameters()] and "lm_head.weight" in names
    assert label == "the built OLMo-2 (model.build)"


def test_bad_patterns_name_the_run_the_index_and_the_model():
    cfg = _load(SMOKE)
    cfg["runs"]["sft_frozen_mid_mlp"]["freeze"] = ["model.layers.{1..2}.mlp.*", "model.layers.{7..9}.mlp.*"]
    cfg["runs"]["sft_qk_only"]["train_only"] = ["*.qproj.*"]
    with pytest.raises(study_config.ConfigError) as err:
        preflight.check(cfg, study_config.resolve_runs(cfg))
    lines = str(err.value).splitlines()
    assert [line.split(" (names look like")[0] for line in lines] == [
        "runs.sft_frozen_mid_mlp.freeze[1]: pattern 'model.layers.{7..9}.mlp.*' matches no parameter of the built "
        "OLMo-2 (model.build)",
        "runs.sft_qk_only.train_only[0]: pattern '*.qproj.*' matches no parameter of the built OLMo-2 (model.build)",
    ]


def test_good_patterns_pass_with_a_note():
    cfg = _load(SMOKE)
    notes = preflight.check(cfg, study_config.resolve_runs(cfg))
    assert notes == ["freeze/train_only patterns of sft_frozen_mid_mlp, sft_qk_only checked against the 47 "
                     "parameters of the built OLMo-2 (model.build)"]  # 4 layers x 11 + embed, norm, lm_head


def _hub_config(hub_id, cache, runs=None):
    cfg = _load(SMOKE)
    cfg["model"] = {"base": hub_id, "dtype": "float32"}
    cfg["data"] = {"source": "openr1"}
    cfg["hub"] = {"cache": str(cache)}
    cfg["runs"] = runs or {"sft": {"method": "sft", "steps": 4, "checkpoints": 1,
                                   "freeze": ["model.layers.{0..1}.mlp.*"]}}
    validate(cfg, schema=SCHEMA)
    return cfg


def test_a_hub_model_is_checked_from_the_cache_once_prefetched(tiny_model, tmp_path):
    cfg = _hub_config("org/tiny-olmo", tmp_path / "hf")
    runs = study_config.resolve_runs(cfg)
    assert preflight.check(cfg, runs) == [
        "freeze/train_only patterns of sft not checked now: org/tiny-olmo has no config.json in the HF cache yet "
        "(the prefetch rule fetches it); training checks them when it starts"]
    _cache_repo(tmp_path / "hf", "model", "org/tiny-olmo", tiny_model)
    assert preflight.check(cfg, runs) == ["freeze/train_only patterns of sft checked against the 25 parameters of "
                                          "org/tiny-olmo"]  # 2 layers
    cfg["runs"]["sft"]["freeze"] = ["model.layers.{2..3}.mlp.*"]  # the miniature's layers on this 2-layer model
    with pytest.raises(study_config.ConfigError, match=r"^runs\.sft\.freeze\[0\]: pattern 'model\.layers\.\{2\.\.3\}"
                                                       r"\.mlp\.\*' matches no parameter of org/tiny-olmo "):
        preflight.check(cfg, study_config.resolve_runs(cfg))


def test_a_local_model_folder_is_checked(tiny_model, tmp_path):
    cfg = _hub_config(str(tiny_model), tmp_path / "hf", {"qk": {"method": "sft", "steps": 4, "checkpoints": 1,
                                                                "train_only": ["*.q_proj.*", "lm_head.bias"]}})
    with pytest.raises(study_config.ConfigError, match=rf"runs\.qk\.train_only\[1\]: pattern 'lm_head\.bias' matches "
                                                       rf"no parameter of {tiny_model}"):
        preflight.check(cfg, study_config.resolve_runs(cfg))


def test_snakemake_dry_run_fails_on_both_naming_the_keys(tmp_path):
    text = SMOKE.read_text()
    for old, new in [("grpo: {learning_rate: 1.0e-4,", "grpo: {learnin_rate: 1.0e-4,"),
                     ('freeze: ["model.layers.{1..2}.mlp.*"]', 'freeze: ["model.layers.{19..25}.mlp.*"]')]:
        assert old in text
        text = text.replace(old, new)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(bad), "-n"], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train_defaults.grpo.learnin_rate: not a GRPOConfig argument (did you mean learning_rate?)" in out
    assert ("runs.sft_frozen_mid_mlp.freeze[0]: pattern 'model.layers.{19..25}.mlp.*' matches no parameter of the "
            "built OLMo-2 (model.build)") in out
    assert "Job stats" not in out  # nothing planned

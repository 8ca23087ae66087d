"""prefetch -> base_model -> data for data.source openr1 through real Snakemake, on local folders standing in for the
hub repositories (the same code path: only the source of the files differs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from scalpel import chat
from scalpel.io import read_jsonl
from test_hub import QUESTION, write_hub_stand_ins

pytestmark = pytest.mark.integration
TARGET = "results/data/counts.json"


def snakemake(workdir: Path, config: Path, *args: str, targets=(TARGET,)) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *args, *targets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_path")
    stand_ins = write_hub_stand_ins(root / "hub")
    config = {
        "model": {"base": str(stand_ins["model"])},
        "data": {"source": "openr1", "openr1": {"dataset": str(stand_ins["openr1"]),
                                                "math500": str(stand_ins["math500"]), "num_proc": 2}},
        "hub": {"cache": str(root / "hf")},
        "runs": {"grpo": {"method": "grpo", "steps": 2, "checkpoints": 1}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    workdir = root / "work"
    snakemake(workdir, root / "config.yaml", targets=("prefetch_all", TARGET))
    return {"root": root, "work": workdir, "stand_ins": stand_ins, "config": root / "config.yaml"}


def test_counts_are_what_the_fixture_implies(study):
    counts = json.loads((study["work"] / "results/data/counts.json").read_text())
    # 10 rows, 7 cn_k12: one gold unparseable, one prompt over 512 tokens, one R1 trace over 4,096 (test_openr1).
    assert counts == {"rows_in": 10, "after_source_filter": 7, "gold_unparseable": 1, "prompt_too_long": 1,
                      "sft_too_long": 1, "grpo_rows": 5, "sft_rows": 6}
    assert json.dumps(counts) in (study["work"] / "logs/data/data.log").read_text()


def test_rows_carry_the_system_prompt(study):
    results = study["work"] / "results/data"
    grpo, sft = read_jsonl(results / "grpo.jsonl"), read_jsonl(results / "sft.jsonl")
    reference = read_jsonl(results / "kl_reference.jsonl")
    assert (len(grpo), len(sft), len(reference)) == (5, 6, 2)
    assert all(r["prompt"][0] == chat.system_message() for r in grpo + sft + reference)


def test_base_model_is_the_stand_in_with_the_study_template(study):
    from transformers import AutoTokenizer

    base = study["work"] / "results/models/base"
    assert (base / "model.safetensors").resolve() == (study["stand_ins"]["model"] / "model.safetensors").resolve()
    rendered = AutoTokenizer.from_pretrained(base).apply_chat_template(QUESTION, tokenize=False,
                                                                       add_generation_prompt=True)
    assert rendered.startswith(f"<|endoftext|><|system|>\n{chat.SYSTEM_PROMPT}\n<|user|>\n")


def test_manifests_list_what_was_fetched(study):
    prefetched = study["work"] / "results/prefetch"
    assert sorted(p.name for p in prefetched.iterdir()) == ["data.json", "eval.json", "model.json"]
    assert json.loads((prefetched / "eval.json").read_text()) == {"hf_home": str(study["root"] / "hf")}  # no tasks
    model, data = (json.loads((prefetched / f"{part}.json").read_text()) for part in ("model", "data"))
    assert model["hf_home"] == data["hf_home"] == str(study["root"] / "hf")
    assert model["model"]["path"] == str(study["stand_ins"]["model"]) and "model.safetensors" in model["model"]["files"]
    assert {k: v["rows"] for k, v in data["datasets"].items()} == {"openr1": 10, "math500": 2}
    assert data["datasets"]["openr1"]["config"] == "extended"
    assert "model.safetensors" in (study["work"] / "logs/prefetch/model.log").read_text()


def test_only_prefetch_reached_for_the_hub(study):
    hf_home = study["root"] / "hf"
    offline = f"hub: HF_HOME={hf_home} offline=True (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1)"
    for job in ("base_model/base_model", "data/data"):
        assert offline in (study["work"] / f"logs/{job}.log").read_text()
    online = f"hub: HF_HOME={hf_home} offline=False (HF_HUB_OFFLINE= HF_DATASETS_OFFLINE= TRANSFORMERS_OFFLINE=)"
    for part in ("model", "data"):
        assert online in (study["work"] / f"logs/prefetch/{part}.log").read_text()


def _planned(out: str) -> dict[str, int]:
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in (row.split() for row in table.splitlines()[3:])}


def test_reruns_stay_within_their_part(study):
    assert "Nothing to be done" in snakemake(study["work"], study["config"], "-n")
    config = yaml.safe_load(study["config"].read_text())
    config["data"]["openr1"]["max_sft_tokens"] = 2048  # data only: the model is not fetched or imported again
    changed = study["root"] / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert _planned(snakemake(study["work"], changed, "-n")) == {"data": 1, "total": 1}
    config["model"]["chat_template"] = "model"  # the base model, and the data counted with its tokenizer
    changed.write_text(yaml.safe_dump(config))
    assert _planned(snakemake(study["work"], changed, "-n")) == {"base_model": 1, "data": 1, "total": 2}

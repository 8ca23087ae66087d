"""Hub sources on local stand-ins: config checks, the job environment, the base-model import and the prefetch."""
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
import torch
import yaml
from conftest import ROOT, write_tiny_study
from huggingface_hub.errors import GatedRepoError
from scalpel import chat, cli, hub, prefetch
from scalpel import config as study_config
from scalpel.analysis import diff, kl
from scalpel.data import openr1
from scalpel.model import base as model
from snakemake.utils import validate
from test_openr1 import CARD, MATH500, ROWS, _write_shards

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
# OLMo-2-1124-7B-Instruct's own template ("tulu" with bos: the tokenizer_config.json of
# allenai/OLMo-2-1124-7B-Instruct on the hub), which the study replaces.
OLMO_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + "
    "message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + "
    "eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)
QUESTION = [{"role": "user", "content": "What is 1+1?"}]


def write_hub_stand_ins(folder):
    """Local folders standing in for the three hub repositories: the model (with OLMo-2's own template), the OpenR1
    copy (card + `extended` in 2 shards + `data`) and MATH-500 (card without configs + test.jsonl)."""
    from transformers import AutoTokenizer

    write_tiny_study(folder)
    tok = AutoTokenizer.from_pretrained(folder / "base")
    tok.save_pretrained(folder / "base")
    # As in OLMo-2's repository (saved by transformers 4.47): the template inside tokenizer_config.json.
    (folder / "base" / "chat_template.jinja").unlink()
    config = json.loads((folder / "base" / "tokenizer_config.json").read_text())
    (folder / "base" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": OLMO_TEMPLATE}))
    _write_shards(folder / "openr1" / "extended", ROWS, 2)
    _write_shards(folder / "openr1" / "data", ROWS[:1], 1)
    (folder / "openr1" / "README.md").write_text(CARD)
    (folder / "math500").mkdir()
    (folder / "math500" / "README.md").write_text("---\nlicense: mit\n---\n")
    (folder / "math500" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH500))
    return {"model": folder / "base", "openr1": folder / "openr1", "math500": folder / "math500"}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return write_hub_stand_ins(tmp_path_factory.mktemp("hub"))


def _config(**overrides):
    cfg = {"runs": {"g": {"method": "grpo", "steps": 2, "checkpoints": 1}}}
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    validate(cfg, schema=SCHEMA)
    return cfg


def test_schema_defaults_are_the_papers():
    cfg = _config()
    assert cfg["data"]["openr1"] == {"dataset": "open-r1/OpenR1-Math-220k", "revision": None, "config": "extended",
                                     "split": "train", "source_filter": "cn_k12", "max_prompt_tokens": 512,
                                     "max_sft_tokens": 4096, "math500": "HuggingFaceH4/MATH-500", "num_proc": 8}
    assert cfg["hub"] == {"cache": None, "offline_jobs": True}
    assert cfg["model"]["chat_template"] == "study" and cfg["model"]["revision"] is None
    hub.check_config(cfg)
    miniature = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    validate(miniature, schema=SCHEMA)
    hub.check_config(miniature)


def test_hub_ids_pass_and_bad_combinations_name_the_key(stand_ins):
    paper = _config(model__base="allenai/OLMo-2-1124-7B-Instruct", model__revision="main", data__source="openr1")
    hub.check_config(paper)
    hub.check_config(_config(model__base=str(stand_ins["model"])))  # a local model on the synthetic world
    cases = [
        (_config(data__source="openr1"), r"^data\.source: openr1 needs a real base model"),
        (_config(model__chat_template="model"), r"^model\.chat_template: model applies to a hub or local model"),
        (_config(model__revision="v1"), r"^model\.revision: v1 applies"),
        (_config(model__base=str(stand_ins["model"]), model__revision="v1"), r"^model\.revision: v1 is a hub revision"),
        (_config(model__base="org/m", data__source="openr1", data__openr1={"math500": None}), r"^kl\.reference: null"),
        (_config(model__base="org/m", data__source="openr1", data__openr1={"dataset": str(stand_ins["openr1"]),
                                                                           "revision": "v2"}),
         r"^data\.openr1\.revision: v2 is a hub revision"),
    ]
    for cfg, message in cases:
        with pytest.raises(study_config.ConfigError, match=message):
            hub.check_config(cfg)
    no_math500 = _config(model__base="org/m", data__source="openr1", data__openr1={"math500": None},
                         kl__reference="my/ref.jsonl")
    hub.check_config(no_math500)


def test_job_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = hub.job_environment({"cache": "hf", "offline_jobs": True}, {})
    assert env == {"HF_HOME": str(tmp_path / "hf"), "NLTK_DATA": str(tmp_path / "hf" / "nltk_data"),
                   "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = hub.job_environment({"cache": None, "offline_jobs": False}, {"HF_HOME": "/x/hf", "NLTK_DATA": "/n"})
    assert env == {"NLTK_DATA": "/n"}
    env = hub.job_environment({"cache": None, "offline_jobs": False}, {"XDG_CACHE_HOME": "/c"})
    assert env == {"NLTK_DATA": "/c/huggingface/nltk_data"}


def test_prefetch_command_args():
    paper = _config(model__base="allenai/OLMo-2-1124-7B-Instruct", model__revision="abc123", data__source="openr1",
                    eval__tasks={"math": ["hendrycks_math500", "gsm8k"], "knowledge": ["mmlu", "gsm8k"]})
    assert {part: prefetch.command_args(paper, part) for part in prefetch.PARTS} == {
        "model": ["--model", "allenai/OLMo-2-1124-7B-Instruct", "--model-revision", "abc123"],
        "data": ["--dataset", "open-r1/OpenR1-Math-220k", "--dataset-config", "extended", "--dataset-split", "train",
                 "--math500", "HuggingFaceH4/MATH-500"],
        "eval": ["--tasks", "hendrycks_math500,gsm8k,mmlu"], "checkpoints": []}  # no imported run (test_import)
    mini = _config(eval__tasks={"facts": ["mini_facts"]})
    assert prefetch.command_args(mini, "model") == prefetch.command_args(mini, "data") == []
    assert prefetch.command_args(mini, "eval", "results/data/lm_eval_tasks") == [
        "--tasks", "mini_facts", "--include-path", "results/data/lm_eval_tasks"]
    spaced = _config(model__base="/models/my model")
    assert prefetch.command_args(spaced, "model") == ["--model", "/models/my model"]  # the rule quotes it
    with pytest.raises(ValueError, match="prefetch part 'weights'"):
        prefetch.command_args(paper, "weights")


def test_import_base_links_weights_and_sets_the_study_template(stand_ins, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = stand_ins["model"]
    out = tmp_path / "base"
    model.import_base(str(src), out)
    weights = out / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (src / "model.safetensors").resolve()
    assert not (out / "config.json").is_symlink()
    tok = AutoTokenizer.from_pretrained(out)
    rendered = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert rendered == f"<|endoftext|><|system|>\n{chat.SYSTEM_PROMPT}\n<|user|>\nWhat is 1+1?\n<|assistant|>\n"
    assert AutoTokenizer.from_pretrained(src).chat_template == OLMO_TEMPLATE  # the source is untouched
    assert (out / chat.OWN_TEMPLATE).read_text() == OLMO_TEMPLATE  # kept for evaluating the base as published

    # Training, diff and KL read the weights through the link: the same tensors, a zero update, a zero KL.
    linked = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(src)
    assert all(torch.equal(a, b) for a, b in zip(linked.state_dict().values(), original.state_dict().values()))
    updates = diff.relative_updates(out, src)
    assert len(updates) == 2 * 7 and (updates.rel_update == 0).all() and (updates.base_norm > 0).all()
    reference = openr1.math500_reference(str(stand_ins["math500"]))
    assert kl.kl_divergence(linked, original, tok, reference)["mean_kl"] == 0


def test_import_base_keeps_the_models_own_template(stand_ins, tmp_path):
    from transformers import AutoTokenizer

    model.import_base(str(stand_ins["model"]), tmp_path / "own", template="model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "own")
    assert tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) == \
        "<|endoftext|><|user|>\nWhat is 1+1?\n<|assistant|>\n"
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in stand_ins["model"].iterdir():
        (bare / f.name).write_bytes(f.read_bytes())
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model.chat_template: model keeps the model's own template, but .* none"):
        model.import_base(str(bare), tmp_path / "none", template="model")


# A local lm-eval task over a JSON file, as a user's include path would hold.
TASK_YAML = """task: stand_in_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def test_prefetch_local_stand_ins(stand_ins, tmp_path):
    facts = [{"question": f"Q{i}?", "choices": ["a", "b"], "label": i % 2} for i in range(3)]
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in facts))
    (tmp_path / "tasks").mkdir()
    for name in ("stand_in_facts", "stand_in_ifeval"):  # an IFEval task needs NLTK's punkt_tab (here already there)
        (tmp_path / "tasks" / f"{name}.yaml").write_text(TASK_YAML.format(data=tmp_path / "facts.jsonl")
                                                         .replace("stand_in_facts", name))
    punkt = tmp_path / "nltk" / "tokenizers" / "punkt_tab"
    punkt.mkdir(parents=True)
    out = tmp_path / "manifest.json"
    cli.main(["prefetch", "--model", str(stand_ins["model"]), "--dataset", str(stand_ins["openr1"]),
                   "--math500", str(stand_ins["math500"]), "--tasks", "stand_in_facts,stand_in_ifeval",
                   "--include-path", str(tmp_path / "tasks"), "--nltk-data", str(tmp_path / "nltk"),
                   "--out", str(out)])
    manifest = json.loads(out.read_text())
    assert manifest["model"]["path"] == str(stand_ins["model"]) and manifest["model"]["commit"] is None
    assert manifest["model"]["files"]["model.safetensors"] == (stand_ins["model"] / "model.safetensors").stat().st_size
    assert manifest["datasets"]["openr1"]["rows"] == len(ROWS)  # `extended` only, not `data`
    assert manifest["datasets"]["openr1"]["columns"][:2] == ["problem", "solution"]
    assert manifest["datasets"]["math500"]["rows"] == len(MATH500)
    task = {"dataset_path": "json", "dataset_name": None, "rows": {"test": 3}}
    assert manifest["eval_tasks"] == {"stand_in_facts": task, "stand_in_ifeval": task}
    assert manifest["nltk_punkt_tab"] == str(punkt)


def test_prefetch_errors_name_what_failed(stand_ins, tmp_path):
    with pytest.raises(ValueError, match="eval.tasks: lm-eval knows no task no_such_task"):
        prefetch.fetch_tasks(["no_such_task"], None)
    broken = copy.deepcopy(ROWS)
    for row in broken:
        del row["messages"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in broken))
    with pytest.raises(ValueError, match=r"broken \(extended/train\): missing column\(s\) messages"):
        prefetch.fetch_dataset(str(tmp_path / "broken"), "extended", "train", None, openr1.REQUIRED)


def test_gated_dataset_error_names_the_task_and_the_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/datasets/Idavidrein/gpqa"))
    try:
        try:
            raise GatedRepoError("Access to dataset Idavidrein/gpqa is restricted.", response=response)
        except GatedRepoError as err:
            raise RuntimeError("could not load the dataset") from err
    except RuntimeError as err:
        message = str(prefetch.explain_task_error("gpqa_diamond_zeroshot", err))
    assert message.startswith("eval task gpqa_diamond_zeroshot: its dataset is gated on the hub and no token was "
                              "found (export HF_TOKEN)")
    assert "accept the dataset's terms" in message
    other = prefetch.explain_task_error("gsm8k", ConnectionError("unreachable"))
    assert str(other) == "eval task gsm8k: ConnectionError: unreachable"


def _cache_repo(hf_home, repo_type, repo_id, files_from):
    """A repository in the HF cache's documented layout (refs/main -> snapshots/<commit>), as prefetch leaves it."""
    repo = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(files_from, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


OFFLINE_JOB = """
import json
from scalpel import hub
from scalpel.data import openr1
model = hub.model_snapshot("org/tiny-olmo")
rows = len(openr1.load_source("org/openr1", "extended", "train"))
try:
    hub.model_snapshot("org/never-fetched")
    missing = None
except Exception as err:
    missing = type(err).__name__
print(json.dumps({"model": str(model), "commit": hub.commit_of(model), "rows": rows, "missing": missing}))
"""


def test_hub_ids_resolve_offline_from_the_cache(stand_ins, tmp_path):
    hf_home = tmp_path / "hf"
    model_dir = _cache_repo(hf_home, "model", "org/tiny-olmo", stand_ins["model"])
    _cache_repo(hf_home, "dataset", "org/openr1", stand_ins["openr1"])
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(ROOT / "workflow"))
    out = subprocess.run([sys.executable, "-c", OFFLINE_JOB], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"model": str(model_dir), "commit": model_dir.name, "rows": len(ROWS),
                      "missing": "LocalEntryNotFoundError"}

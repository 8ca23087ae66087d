"""Each imported model is evaluated with its own tokenizer and chat template (issue 18): a hub checkpoint's folder
holds its commit's tokenizer files, and lm-eval is told that commit as the revision of the weights and of the
tokenizer (its vLLM backend reads the tokenizer from main otherwise). vLLM is not installed here: the arguments
reaching lm-eval are tested, and the HF backend loads the folders for real."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, write_tiny_study
from scalpel.eval import evaluate
from test_import import REPO, _cache_revision, _imports, _offline, _spec

TEMPLATES = {"stage1-step-000000001": "{{ 'first' }}", "stage1-step-000000002": "{{ 'second' }}"}
COMMITS = {"stage1-step-000000001": "a" * 40, "stage1-step-000000002": "b" * 40}


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """Two revisions of one repo whose chat templates differ, prefetched and linked offline as steps 1 and 2."""
    root = tmp_path_factory.mktemp("own")
    write_tiny_study(root)
    hf_home = root / "hf"
    for revision, commit in COMMITS.items():
        snapshot = _cache_revision(hf_home, REPO, revision, commit, files_from=root / "base")
        (snapshot / "chat_template.jinja").write_text(TEMPLATES[revision])
    revisions = {1: "stage1-step-000000001", 2: "stage1-step-000000002"}
    result = _offline(hf_home, {"p": _imports(REPO, revisions)}, _spec(REPO, revisions), root / "checkpoints")
    assert "error" not in result, result
    return root / "checkpoints"


def test_each_linked_checkpoint_carries_its_own_commit_tokenizer_and_template(linked):
    from scalpel.model import imported
    from transformers import AutoTokenizer

    for step, revision in ((1, "stage1-step-000000001"), (2, "stage1-step-000000002")):
        folder = linked / f"step-{step}"
        assert imported.source(folder) == {"repo": REPO, "revision": revision, "commit": COMMITS[revision]}
        assert AutoTokenizer.from_pretrained(folder).chat_template == TEMPLATES[revision]
        assert f"/snapshots/{COMMITS[revision]}/" in str((folder / "chat_template.jinja").resolve())
    assert imported.source(linked) is None  # not a checkpoint of an import


def test_model_args_name_the_commit_for_weights_and_tokenizer(linked):
    from scalpel.model.imported import source

    folder = str(linked / "step-2")
    vllm = evaluate.model_args(folder, "vllm", "bfloat16", {"max_model_len": 4096}, seed=1, source=source(folder))
    assert vllm == {"pretrained": folder, "dtype": "bfloat16", "trust_remote_code": False, "seed": 1,
                    "revision": "b" * 40, "tokenizer": folder, "tokenizer_revision": "b" * 40, "max_model_len": 4096}
    hf = evaluate.model_args(folder, "hf", "float32", source=source(folder))
    assert (hf["revision"], hf["tokenizer"]) == ("b" * 40, folder) and "tokenizer_revision" not in hf
    trained = evaluate.model_args("results/runs/sft/checkpoints/step-2", "vllm", "bfloat16", source=None)
    assert not {"revision", "tokenizer", "tokenizer_revision"} & set(trained)
    folder_import = evaluate.model_args("ckpt", "vllm", "bfloat16", source={"folder": "/data/ckpt"})
    assert "tokenizer_revision" not in folder_import
    # a tokenizer the config names is not read at the checkpoint's commit
    own = evaluate.model_args(folder, "vllm", "bfloat16", {"tokenizer": "org/tok"}, source=source(folder))
    assert own["tokenizer"] == "org/tok" and "tokenizer_revision" not in own and own["revision"] == "b" * 40


def test_lm_evals_hf_backend_loads_the_folder_at_its_commit_with_its_own_template(linked):
    from scalpel.eval.lm_backends import model_class
    from scalpel.model.imported import source

    folder = str(linked / "step-2")
    lm = model_class("hf").create_from_arg_obj(evaluate.model_args(folder, "hf", "float32", source=source(folder)),
                                               {"batch_size": 1, "device": "cpu"})
    assert lm.revision == "b" * 40 and lm.tokenizer.chat_template == TEMPLATES["stage1-step-000000002"]


CAPTURE = """
import json, sys
from scalpel import cli
from scalpel.eval import lm_backends

class Stop(Exception):
    pass

class Fake:
    @classmethod
    def create_from_arg_obj(cls, args, extra):
        print(json.dumps(args))
        raise Stop

lm_backends.model_class = lambda backend: Fake
try:
    cli.main(sys.argv[1:])
except Stop:
    pass
"""


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_the_evaluate_command_passes_the_commit_to_lm_eval(linked, tmp_path, backend):
    """`python -m scalpel evaluate` as the rule runs it, up to the lm-eval model it would build."""
    folder = str(linked / "step-1")
    cmd = [sys.executable, "-c", CAPTURE, "evaluate", "--checkpoint", folder, "--tasks", "t", "--out",
           str(tmp_path / "e.tsv"), "--run", "p", "--step", "1", "--backend", backend, "--dtype", "bfloat16",
           "--model-args", json.dumps({"max_model_len": 512})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (args["pretrained"], args["revision"], args["tokenizer"]) == (folder, "a" * 40, folder)
    assert args.get("tokenizer_revision") == ("a" * 40 if backend == "vllm" else None)
    assert args["max_model_len"] == 512

"""The paper config measures what the authors measured: the base model's template and the generation budget."""
import pytest
from conftest import ROOT
from scalpel.chat import OWN_TEMPLATE
from scalpel.data import synthetic
from scalpel.eval import evaluate, lm_backends
from scalpel.tasks import mini as tasks
from test_hub import OLMO_TEMPLATE  # OLMo-2-1124-7B-Instruct's own template as published

PAPER = ROOT / "config/paper.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from conftest import TINY_WORLD, write_tiny_study

    folder = tmp_path_factory.mktemp("fidelity")
    write_tiny_study(folder)
    synthetic.write_world(0, TINY_WORLD, folder)
    tasks.write_tasks(folder, folder / "tasks", max_gen_toks=8)
    return folder


def _first_context(res, task):
    return res["samples"][task][0]["arguments"][0][0]


def test_base_is_evaluated_with_its_own_template_checkpoints_with_the_study_one(study):
    common = dict(run="base", step=0, limit=1, gen_kwargs={"max_gen_toks": 2})
    _, res_study = evaluate.evaluate(str(study / "base"), ["mini_math_l1"], str(study / "tasks"), **common)
    _, res_own = evaluate.evaluate(str(study / "base"), ["mini_math_l1"], str(study / "tasks"),
                                   chat_template=OLMO_TEMPLATE, **common)
    own, shared = _first_context(res_own, "mini_math_l1"), _first_context(res_study, "mini_math_l1")
    assert shared.startswith("<|endoftext|><|system|>\nYou are a helpful AI Assistant")
    assert own.startswith("<|endoftext|><|user|>\n") and "<|system|>" not in own
    assert own == "<|endoftext|>" + shared[shared.index("<|user|>"):]  # the same turns, minus the system prompt


@pytest.fixture(scope="module")
def paper_evaluate_jobs(tmp_path_factory):
    import os

    from scalpel import slurm_preview

    env = dict(os.environ, SLURM_ACCOUNT="acct", SLURM_PARTITION="cpu", SLURM_GPU_PARTITION="gpu")
    jobs = slurm_preview.dry_run_jobs(PAPER, ROOT / "profiles/slurm", tmp_path_factory.mktemp("paper"), env)
    return [j["shell"] for j in jobs if j["rule"] == "evaluate"]


def test_paper_dag_evaluates_only_the_base_with_its_own_template(paper_evaluate_jobs):
    flag = f"--chat-template results/models/base/{OWN_TEMPLATE}"
    with_own = [s for s in paper_evaluate_jobs if flag in s]
    assert len(with_own) == 1 and "--run base " in with_own[0]
    assert all("--chat-template" not in s for s in paper_evaluate_jobs if s not in with_own)


def test_own_base_template_needs_a_published_model():
    import copy

    import yaml
    from scalpel import config as study_config
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    validate(cfg, schema=str(ROOT / "workflow/schemas/config.schema.yaml"))
    assert cfg["eval"]["base_chat_template"] == "study"
    bad = copy.deepcopy(cfg)
    bad["eval"]["base_chat_template"] = "own"
    with pytest.raises(study_config.ConfigError, match="eval.base_chat_template: own needs a published base"):
        study_config.eval_suites(bad, final=True)


def test_budget_is_the_rest_of_the_context_and_no_prompt_is_cut():
    prompt = list(range(500))
    assert lm_backends.rest_of_context(prompt, max_gen_toks=4096, max_model_len=4096) == (prompt, 3596)
    long = list(range(3900))  # a long few-shot prompt: every token kept, 196 left to generate
    kept, budget = lm_backends.rest_of_context(long, max_gen_toks=4096, max_model_len=4096)
    assert kept == long and budget == 196
    assert lm_backends.rest_of_context(prompt, max_gen_toks=100, max_model_len=4096) == (prompt, 100)
    with pytest.raises(lm_backends.PromptTooLong, match="a prompt of 4096 tokens leaves no room"):
        lm_backends.rest_of_context(list(range(4096)), max_gen_toks=4096, max_model_len=4096)


def test_lm_evals_vllm_backend_calls_the_function_we_replace():
    """WholePromptVLLM swaps vllm_causallms.maybe_truncate during generate_until; vllm itself is not installed here,
    so check lm-eval's source calls that module-level name with the arguments rest_of_context takes."""
    import importlib.util
    import inspect

    source = open(importlib.util.find_spec("lm_eval.models.vllm_causallms").origin).read()
    body = source[source.index("    def generate_until("):]
    body = body[:body.index("\n    def ", 10)]
    assert "toks, max_gen_toks = maybe_truncate(" in body
    assert "from lm_eval.models.utils import (" in source and "    maybe_truncate,\n" in source
    params = inspect.signature(lm_backends.rest_of_context).parameters
    assert {"max_gen_toks", "max_model_len"} <= set(params)


def test_hf_backend_refuses_to_cut_a_prompt(study):
    """The miniature's HF path: a prompt that does not fit max_length - max_gen_toks fails, naming the keys."""
    with pytest.raises(lm_backends.PromptTooLong, match=r"lower max_gen_toks \(eval.generation\)"):
        evaluate.evaluate(str(study / "base"), ["mini_math_l1"], str(study / "tasks"), run="base", step=0, limit=1,
                          gen_kwargs={"max_gen_toks": 250})  # max_position_embeddings 256

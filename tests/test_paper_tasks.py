"""The paper_* lm-eval tasks render, for each document, the prompt lighteval 0.9.2 rendered for the authors, and score
completions as lighteval scored them.

Ground truth: tests/fixtures/lighteval_prompts.json, written by tests/fixtures/make_lighteval_prompts.py running
lighteval 0.9.2 itself on the rows of tests/fixtures/paper_task_rows.json (datasets' real column names). Here the
same rows go through lm-eval's real TaskManager, our committed task YAMLs (dataset swapped for the local rows) and
lm-eval's HF model wrapper rendering OLMo-2-1124-7B-Instruct's chat template.
"""
import json

import pytest
import yaml
from conftest import ROOT
from scalpel.eval import evaluate
from scalpel.tasks import paper as paper_tasks
from scalpel.tasks.paper import TASK_DIR

FIXTURES = ROOT / "tests/fixtures"
LIGHTEVAL = json.loads((FIXTURES / "lighteval_prompts.json").read_text())
ROWS = json.loads((FIXTURES / "paper_task_rows.json").read_text())
MMLU_FIXTURE_SUBJECTS = list(ROWS["mmlu"])
# task -> (its YAML, its rows' splits, the key of its rows and of lighteval's prompts in the fixtures)
SINGLE = {"paper_aime24": "aime24", "paper_math500": "math500", "paper_gpqa_diamond": "gpqa_diamond",
          "paper_gsm8k": "gsm8k", "paper_ifeval": "ifeval"}


def _local_copy(folder, task: str, include, splits: dict) -> None:
    """A task that is the committed one with its dataset replaced by local JSON rows."""
    files = {}
    for split, rows in splits.items():
        path = folder / f"{task}.{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[split] = str(path)
    cfg = {"include": str(include), "task": task, "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": files}}
    (folder / f"{task}.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("paper_tasks")
    for task, key in SINGLE.items():
        _local_copy(folder, task, TASK_DIR / f"{task}.yaml", ROWS[key])
    _local_copy(folder, "paper_gsm8k_cut", TASK_DIR / "paper_gsm8k_cut.yaml", ROWS["gsm8k"])
    for subject in MMLU_FIXTURE_SUBJECTS:
        name = f"paper_mmlu_{subject}"
        _local_copy(folder, name, TASK_DIR / "mmlu" / f"{name}.yaml", ROWS["mmlu"][subject])
    group = yaml.safe_load((TASK_DIR / "mmlu/paper_mmlu.yaml").read_text())
    group["task"] = [f"paper_mmlu_{s}" for s in MMLU_FIXTURE_SUBJECTS]
    (folder / "paper_mmlu.yaml").write_text(yaml.safe_dump(group))
    return TaskManager(include_path=str(folder))


@pytest.fixture(scope="module")
def olmo(tmp_path_factory):
    """A tiny OLMo-2 checkpoint folder."""
    from conftest import write_tiny_study

    folder = tmp_path_factory.mktemp("olmo")
    write_tiny_study(folder)
    return folder / "base"


def _with_template(model):
    from test_hub import OLMO_TEMPLATE

    assert LIGHTEVAL["chat_template"] == OLMO_TEMPLATE  # lighteval rendered with the published template
    model.tokenizer.chat_template = OLMO_TEMPLATE
    return model


@pytest.fixture(scope="module")
def lm(olmo):
    """lm-eval's HF wrapper on a tiny OLMo-2 whose tokenizer carries OLMo-2-1124-7B-Instruct's template."""
    from lm_eval.models.huggingface import HFLM

    return _with_template(HFLM(pretrained=str(olmo), device="cpu", batch_size=1))


def _task(manager, name):
    return manager.load([name])["tasks"][name]


def _instances(task, lm):
    task.build_all_requests(apply_chat_template=True, fewshot_as_multiturn=True, chat_template=lm.apply_chat_template)
    return task.instances


def lighteval_stops(request_stops: list[str]) -> list[str]:
    """The stop sequences lighteval 0.9.2's backends passed to the model for a request with the chat template on:
    none, whatever the request asked (huggingface/lighteval@8d9ecd66 src/lighteval/models/vllm/vllm_model.py and
    transformers/transformers_model.py, `greedy_until`: `if self.use_chat_template: stop_tokens = []`)."""
    return []


def _check_prompts(task, lm, expected: list[dict]) -> None:
    instances = _instances(task, lm)
    prompts = {i.doc_id: i.arguments[0] for i in instances}
    assert prompts == {e["row"]: e["prompt"] for e in expected}
    for e in expected:
        mine = [i for i in instances if i.doc_id == e["row"]]
        if "stop" in e:  # lighteval's request had e["stop"]; its backend passed the model lighteval_stops(...)
            assert mine[0].arguments[1]["until"] == lighteval_stops(e["stop"])
        if "continuations" in e:
            assert [i.arguments[1] for i in mine] == e["continuations"]


@pytest.mark.parametrize("task", list(SINGLE))
def test_prompt_equals_lightevals(manager, lm, task):
    _check_prompts(_task(manager, task), lm, LIGHTEVAL["tasks"][SINGLE[task]])


@pytest.mark.parametrize("subject", MMLU_FIXTURE_SUBJECTS)
def test_mmlu_prompt_equals_lightevals(manager, lm, subject):
    expected = LIGHTEVAL["tasks"]["mmlu"][subject]
    task = _task(manager, f"paper_mmlu_{subject}")
    _check_prompts(task, lm, expected)
    first = expected[0]["prompt"]
    assert first.count("<|user|>\nThe following are") == 1 and "<|system|>" not in first
    assert first.count("<|assistant|>\n B<|endoftext|>") >= 1  # assistant turns keep lighteval's leading space


def test_mmlu_zero_shot_puts_the_instruction_on_the_question(manager, lm):
    task = _task(manager, "paper_mmlu_abstract_algebra")
    task.set_config(key="num_fewshot", value=0)
    doc = task.eval_docs[0]
    prompt = _instances(task, lm)[0].arguments[0]
    assert prompt == ("<|endoftext|><|user|>\nThe following are multiple choice questions (with answers) about "
                      f"abstract algebra.\n\n{doc['question']}\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:\n<|assistant|>\n")


def test_mmlu_scores_the_letter_after_the_newline_as_lighteval(manager, lm):
    """lighteval's tok_encode_pair and lm-eval's _encode_pair both move the context's trailing newline into the
    continuation: the scored text is "\\n A"."""
    context, choice = _instances(_task(manager, "paper_mmlu_abstract_algebra"), lm)[0].arguments
    _, continuation = lm._encode_pair(context, choice)
    assert lm.tok_decode(continuation) == "\n A"


def test_gpqa_gold_letters_follow_lightevals_seeded_draws(manager):
    letters = "".join("ABCD"[p] for p in paper_tasks.gpqa_gold_positions(20))
    assert letters == "DAAAAAACBAAACDDBABAA"  # rows 0-19 of gpqa_diamond as lighteval 0.9.2 placed them
    docs = _task(manager, "paper_gpqa_diamond").eval_docs
    assert [d["gold_letter"] for d in docs] == ["ABCD"[e["gold_index"]] for e in LIGHTEVAL["tasks"]["gpqa_diamond"]]
    assert docs[0]["choices"][3] == ROWS["gpqa_diamond"]["train"][0]["Correct Answer"]  # raw, trailing newline kept


def test_gsm8k_fewshot_draws_are_lightevals():
    draws = paper_tasks.lighteval_fewshot_draws(1319, 7473, 5)
    assert draws[:3] == [[1946, 403, 6109, 3892, 2200], [6851, 5067, 2916, 1277, 6381],
                         [4624, 5267, 5204, 5116, 2647]]
    assert len(draws) == 1319 and all(len(set(d)) == 5 for d in draws)


class AnswersA:
    """A stand-in model that prefers the continuation " A" every time, so that each subject's accuracy is known."""

    def __new__(cls, tokenizer):
        from lm_eval.api.model import LM

        class _AnswersA(LM):
            tokenizer_name = "olmo"

            def loglikelihood(self, requests):
                return [(0.0 if r.args[1] == " A" else -1.0, True) for r in requests]

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                raise NotImplementedError

            def apply_chat_template(self, chat_history, add_generation_prompt=True):
                return tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)

        return _AnswersA()


def test_mmlu_average_is_the_mean_over_subjects(manager, lm):
    """abstract_algebra: 1 question, gold A; high_school_us_history: 3 questions, golds B, C, D. Always answering A
    gives 1.0 and 0.0: lighteval's average is 0.5, a size-weighted one would be 0.25."""
    import lm_eval

    res = lm_eval.simple_evaluate(model=AnswersA(lm.tokenizer), tasks=["paper_mmlu"], task_manager=manager,
                                  apply_chat_template=True, fewshot_as_multiturn=True)
    results = res["results"]
    assert results["paper_mmlu_abstract_algebra"]["acc,none"] == 1.0
    assert results["paper_mmlu_high_school_us_history"]["acc,none"] == 0.0
    assert results["paper_mmlu"]["acc,none"] == pytest.approx(0.5)
    table = evaluate.normalise(results, "base", 0)
    assert table.set_index(["task", "metric"]).loc[("paper_mmlu", "acc"), "value"] == pytest.approx(0.5)


@pytest.mark.parametrize("task", list(SINGLE))
def test_process_results_score_as_lighteval(manager, task):
    loaded = _task(manager, task)
    docs = loaded.eval_docs
    cases = LIGHTEVAL["scores"][SINGLE[task]]
    assert {c["lighteval"].get("pass@1", c["lighteval"].get("prompt_level_strict_acc")) for c in cases} >= {0, 1} \
        or task == "paper_gsm8k"
    for case in cases:
        got = loaded.process_results(docs[case["row"]], [case["completion"]])
        assert {k: got[k] for k in case["lighteval"]} == case["lighteval"], case["completion"]


def test_math_reports_the_authors_score_and_the_fixed_one(manager):
    """lighteval 0.9.2 scores 1/4 against a gold of 0.25 as wrong (its pass@1 passes the Doc as the precision)."""
    task = _task(manager, "paper_math500")
    got = task.process_results(task.eval_docs[1], ["Therefore, the final answer is: $\\boxed{\\frac{1}{4}}$. I hope "
                                                    "it is correct"])
    assert got == {"pass@1": 0.0, "pass@1_fixed": 1.0}


@pytest.mark.parametrize("task", list(SINGLE))
def test_generation_settings_are_the_authors(manager, task):
    kwargs = _task(manager, task).config.generation_kwargs
    assert kwargs == {"until": [], "do_sample": True, "temperature": 0.6, "top_p": 0.95, "max_gen_toks": 4096}
    assert _task(manager, task).config.repeats == 1


def test_gsm8k_cut_is_paper_gsm8k_stopped_at_question(manager, lm):
    """paper_gsm8k_cut: the request lighteval built (stop "Question:"), for who wants the cut the authors never had."""
    cut, paper = _task(manager, "paper_gsm8k_cut"), _task(manager, "paper_gsm8k")
    assert cut.config.generation_kwargs == dict(paper.config.generation_kwargs, until=["Question:"])
    mine, theirs = _instances(cut, lm), _instances(paper, lm)
    assert [i.arguments[0] for i in mine] == [i.arguments[0] for i in theirs]
    assert {i.arguments[1]["until"][0] for i in mine} == {e["stop"][0] for e in LIGHTEVAL["tasks"]["gsm8k"]}


def _generator_stops(manager, lm, model, task, record, as_task=None) -> list:
    """What `model`, one of our backends, hands the generator for each of `task`'s first two requests as `lm` renders
    them (max_gen_toks cut to 4, no model run: `record` stands in for the backend's generation call); `as_task`: the
    same requests under another task's name."""
    from dataclasses import replace

    requests = [replace(i, arguments=(i.arguments[0], dict(i.arguments[1], max_gen_toks=4)),
                        metadata=(as_task or i.task_name, i.doc_id, i.repeats))
                for i in _instances(_task(manager, task), lm)[:2]]
    record.clear()
    assert model.generate_until(requests) == [""] * len(requests)
    return list(record)


GENERATIVE = [*SINGLE, "paper_gsm8k_cut"]


def _expected_stops(task):
    if task == "paper_gsm8k_cut":
        return ["Question:"]
    return lighteval_stops(LIGHTEVAL["tasks"][SINGLE[task]][0]["stop"])


@pytest.mark.parametrize("task", GENERATIVE)
def test_hf_backend_passes_the_generator_lightevals_stops(manager, lm, olmo, task, monkeypatch):
    """lm-eval's HF backend builds transformers' stopping criteria from `stop` (huggingface.py `_model_generate`); ours
    gives it the task's stops alone, without lm-eval's EOS string: none for the paper tasks, as lighteval."""
    from scalpel.eval.lm_backends import WholePromptHFLM

    model = _with_template(WholePromptHFLM(pretrained=str(olmo), device="cpu", batch_size=1))
    model._max_length = 1 << 20  # the model never runs; the 5-shot prompts would not fit its 256 positions
    stops = []

    def generate(context, max_length, stop, **kwargs):
        stops.append(list(stop))
        return context

    monkeypatch.setattr(model, "_model_generate", generate)
    assert _generator_stops(manager, lm, model, task, stops) == [_expected_stops(task)] * 2
    # any other task (the miniature's, lm-eval's own) keeps lm-eval's rule: its until plus the EOS string
    eos = model.tok_decode(model.eot_token_id, skip_special_tokens=False)
    assert _generator_stops(manager, lm, model, task, stops, as_task="mini_x") == [_expected_stops(task) + [eos]] * 2


@pytest.fixture(scope="module")
def vllm_stand_in():
    """lm-eval's vLLM backend imported (once: it registers itself) over stand-in vllm modules, vllm not being
    installed on CPU; SamplingParams records what it is given."""
    import importlib
    import importlib.metadata
    import sys
    import types

    with pytest.MonkeyPatch.context() as mp:
        for name in ("vllm", "vllm.lora", "vllm.lora.request", "vllm.renderers", "vllm.renderers.hf",
                     "vllm.tokenizers"):
            mp.setitem(sys.modules, name, types.ModuleType(name))
        vllm = sys.modules["vllm"]
        vllm.LLM = vllm.TokensPrompt = sys.modules["vllm.lora.request"].LoRARequest = object
        vllm.SamplingParams = types.SimpleNamespace
        sys.modules["vllm.renderers.hf"].resolve_chat_template = sys.modules["vllm.tokenizers"].get_tokenizer = None
        real_version = importlib.metadata.version
        mp.setattr(importlib.metadata, "version", lambda d: "0.11.0" if d == "vllm" else real_version(d))
        mp.delitem(sys.modules, "lm_eval.models.vllm_causallms", raising=False)
        yield importlib.import_module("lm_eval.models.vllm_causallms")
        sys.modules.pop("lm_eval.models.vllm_causallms", None)
        vars(sys.modules["lm_eval.models"]).pop("vllm_causallms", None)


@pytest.mark.parametrize("task", GENERATIVE)
def test_vllm_backend_passes_the_generator_lightevals_stops(manager, lm, task, vllm_stand_in):
    """lm-eval's vLLM backend sets SamplingParams(stop=...) per request (vllm_causallms.py `generate_until`); ours
    gives it the task's stops alone, without lm-eval's EOS string: none for the paper tasks, as lighteval's
    `SamplingParams.stop = []` (vllm_model.py `_generate`). vLLM still stops at the EOS token, as theirs did."""
    from types import SimpleNamespace

    from lm_eval.api.model import CacheHook
    from scalpel.eval.lm_backends import whole_prompt_vllm

    model = object.__new__(whole_prompt_vllm())
    params = []

    def generate(requests, generate, sampling_params):
        params.extend(sampling_params)
        return [SimpleNamespace(outputs=[SimpleNamespace(text="")]) for _ in requests]

    model.__dict__.update(tokenizer=lm.tokenizer, tok_encode=lambda texts: [lm.tok_encode(t) for t in texts],
                          _model_generate=generate, _max_length=1 << 20, _max_gen_toks=256, batch_size=1, _rank=0,
                          _world_size=1, think_end_token=None, truncation_side="left", cache_hook=CacheHook(None))
    stops = _generator_stops(manager, lm, model, task, params)
    assert [p.stop for p in stops] == [_expected_stops(task)] * 2 and {p.max_tokens for p in stops} == {4}
    eos = lm.tokenizer.decode(lm.tokenizer.eos_token_id)
    others = _generator_stops(manager, lm, model, task, params, as_task="mini_x")
    assert [p.stop for p in others] == [_expected_stops(task) + [eos]] * 2


def test_paper_and_other_requests_keep_their_order():
    from types import SimpleNamespace

    from scalpel.eval import lm_backends

    requests = [SimpleNamespace(task_name=n) for n in ("mini_a", "paper_x", "mini_b", "paper_y")]
    module = SimpleNamespace(handle_stop_sequences="lm-eval's")
    seen = []

    def generate(some):
        seen.append((module.handle_stop_sequences is lm_backends.task_stops, [r.task_name for r in some]))
        return [r.task_name.upper() for r in some]

    assert lm_backends._generate(requests, generate, module) == ["MINI_A", "PAPER_X", "MINI_B", "PAPER_Y"]
    assert seen == [(True, ["paper_x", "paper_y"]), (False, ["mini_a", "mini_b"])]
    assert module.handle_stop_sequences == "lm-eval's"


def test_every_paper_task_is_registered_and_mmlu_has_all_57_subjects():
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASK_DIR))
    names = set(manager.all_tasks)
    assert {"paper_aime24", "paper_math500", "paper_gpqa_diamond", "paper_gsm8k", "paper_mmlu",
            "paper_ifeval"} <= names
    builtin = Path(lm_eval.__file__).parent / "tasks/mmlu/default"
    lm_eval_mmlu = sorted(yaml.safe_load(p.read_text())["dataset_name"] for p in builtin.glob("mmlu_*.yaml"))
    assert sorted(paper_tasks.MMLU_SUBJECTS) == lm_eval_mmlu and len(set(lm_eval_mmlu)) == 57
    group = yaml.safe_load((TASK_DIR / "mmlu/paper_mmlu.yaml").read_text())
    assert group["task"] == [f"paper_mmlu_{s}" for s in paper_tasks.MMLU_SUBJECTS]
    assert group["aggregate_metric_list"] == [{"metric": "acc", "aggregation": "mean", "weight_by_size": False}]
    assert {f"paper_mmlu_{s}" for s in paper_tasks.MMLU_SUBJECTS} <= names


def test_several_samples_per_problem_give_pass_at_1_as_a_mean_and_pass_at_k(manager):
    spec = evaluate.sampled_task(manager, "paper_aime24", 4)
    assert spec["repeats"] == 4 and spec["filter_list"][0]["filter"] == [{"function": "take_first_k", "k": 4}]
    assert [m["metric"] for m in spec["metric_list"]] == ["pass@1", "pass@1_fixed", "samples_correct", "pass@2",
                                                         "pass@4"]
    task = manager.load([spec])["tasks"]["paper_aime24"]
    assert task.config.repeats == 4
    doc = task.eval_docs[0]
    right, wrong = f"The final answer is $\\boxed{{{doc['answer']}}}$", "The final answer is $\\boxed{-1}$"
    got = task.process_results(doc, [[right, wrong, right, wrong]])
    # 2 of 4 right: pass@1 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1
    assert got == pytest.approx({"pass@1": 0.5, "pass@1_fixed": 0.5, "samples_correct": 2.0, "pass@2": 5 / 6,
                                 "pass@4": 1.0})
    with pytest.raises(ValueError, match="eval.samples: paper_mmlu_abstract_algebra is multiple_choice"):
        evaluate.sampled_task(manager, f"paper_mmlu_{MMLU_FIXTURE_SUBJECTS[0]}", 4)

import math

import pytest
from scalpel.data import synthetic
from scalpel.eval import evaluate
from scalpel.tasks import mini as tasks


def test_normalise_lm_eval_results():
    results = {
        "mini_math_l1": {"alias": "mini_math_l1", "accuracy,none": 0.5, "accuracy_stderr,none": 0.1,
                         "format,none": 1.0, "format_stderr,none": 0.0},
        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.05,
                  "exact_match,flexible-extract": 0.3, "exact_match_stderr,flexible-extract": "N/A"},
    }
    table = evaluate.normalise(results, "grpo", 10)
    rows = {(r.task, r.metric): (r.value, r.stderr) for r in table.itertuples()}
    assert rows[("mini_math_l1", "accuracy")] == (0.5, 0.1)
    assert rows[("gsm8k", "exact_match,strict-match")] == (0.25, 0.05)
    assert math.isnan(rows[("gsm8k", "exact_match,flexible-extract")][1])
    assert len(table) == 4 and set(table.run) == {"grpo"} and set(table.step) == {10}


def test_normalise_refuses_empty_results():
    with pytest.raises(ValueError, match="no numeric metric for sft step 3"):
        evaluate.normalise({"t": {"alias": "t"}}, "sft", 3)


def test_process_results_use_the_reward():
    doc = {"solution": "The answer is $\\boxed{7}$."}
    right, wrong = "<think>\n3 + 4 = 7\n</think>\n<answer>\n\\boxed{7}\n</answer>", "\\boxed{8}"
    assert tasks.process_math(doc, [right]) == {"pass@1": 1.0, "format": 1.0}
    assert tasks.process_math(doc, [wrong]) == {"pass@1": 0.0, "format": 0.0}
    # K samples of one problem (lm-eval's take_first_k filter): pass@1 is their mean, pass@k the unbiased estimate.
    scores = tasks.process_math(doc, [[right, wrong, wrong, wrong]])
    assert scores == {"pass@1": 0.25, "pass@2": 0.5, "pass@4": 1.0, "format": 0.25, "samples_correct": 1.0}


def test_instruction_checks_by_kind():
    def check(kind, reply):
        return tasks.process_instruction({"kind": kind, "target": "unused"}, [reply])["prompt_level_strict_acc"]

    assert check("quotation", ' "blue"\n') == 1.0
    assert check("quotation", 'blue"') == 0.0 and check("quotation", '"') == 0.0
    assert check("uppercase", "RED") == 1.0 and check("uppercase", "Blue") == 0.0
    assert check("one_word", "seeds\n") == 1.0 and check("one_word", "<think>\nblue") == 0.0
    assert check("one_word", "red fish") == 0.0
    with pytest.raises(ValueError, match="kind 'shout'"):
        check("shout", "x")


def test_task_yamls_load_in_lm_eval(tmp_path):
    from lm_eval.tasks import TaskManager

    cfg = dict(max_operand=9, entities=8, eval_problems=4, instruction_probes=4, train_problems=20,
               pretrain_worked_fraction=0.1,
               pretrain_math_levels=[1], train_levels=[1, 2])
    synthetic.write_world(0, cfg, tmp_path)
    names = tasks.write_tasks(tmp_path, tmp_path / "tasks", max_gen_toks=50)
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    loaded = manager.load(names)["tasks"]
    math_task = manager.load([evaluate.sampled_task(manager, "mini_math_l2", 4)])["tasks"]["mini_math_l2"]
    assert math_task.config.generation_kwargs == {"until": ["<|endoftext|>"], "max_gen_toks": 50, "do_sample": True,
                                                  "temperature": 0.6, "top_p": 0.95}
    assert math_task.config.repeats == 4
    docs = list(math_task.eval_docs)
    assert len(docs) == 4 and all(d["level"] == 2 for d in docs)
    replies = [docs[0]["worked"]] * 3 + [docs[0]["wrong_terse"]]
    assert math_task.process_results(docs[0], [replies]) == {"pass@1": 0.75, "pass@2": 1.0, "pass@4": 1.0,
                                                             "format": 1.0, "samples_correct": 3.0}
    assert loaded["mini_math_l2"].config.repeats == 1  # one sample unless eval.samples asks for more
    facts = loaded["mini_facts"]
    doc = next(iter(facts.eval_docs))
    assert facts.doc_to_choice(doc)[facts.doc_to_target(doc)] == doc["answer"]


def test_fewshot_groups_keep_task_defaults_apart():
    groups = evaluate.fewshot_groups(["aime24", "gsm8k", "mmlu", "ifeval"], {"gsm8k": 5, "mmlu": 5})
    assert groups == {(None, True): ["aime24", "ifeval"], (5, True): ["gsm8k", "mmlu"]}


def test_fewshot_groups_keep_single_turn_tasks_apart():
    groups = evaluate.fewshot_groups(["paper_mmlu", "leaderboard_mmlu_pro", "paper_aime24"],
                                     {"paper_mmlu": 5, "leaderboard_mmlu_pro": 5}, {"leaderboard_mmlu_pro": False})
    assert groups == {(5, True): ["paper_mmlu"], (5, False): ["leaderboard_mmlu_pro"], (None, True): ["paper_aime24"]}


def test_model_args_never_run_hub_code_and_take_the_config():
    args = evaluate.model_args("ckpt", "vllm", "bfloat16", {"gpu_memory_utilization": 0.5}, seed=42)
    assert args == {"pretrained": "ckpt", "dtype": "bfloat16", "trust_remote_code": False, "seed": 42,
                    "gpu_memory_utilization": 0.5}
    assert "seed" not in evaluate.model_args("ckpt", "hf", "float32")


def test_generation_and_fewshot_settings_reach_lm_eval(tmp_path):
    """One loaded model, two lm-eval calls: sampling settings on the generate_until task, 2 shots on the other."""
    from conftest import TINY_WORLD, write_tiny_study

    write_tiny_study(tmp_path)
    synthetic.write_world(0, TINY_WORLD, tmp_path)
    tasks.write_tasks(tmp_path, tmp_path / "tasks", max_gen_toks=50)
    gen = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "max_gen_toks": 5}
    table, res = evaluate.evaluate(str(tmp_path / "base"), ["mini_math_l1", "mini_facts"], str(tmp_path / "tasks"),
                                   run="base", step=0, limit=2, gen_kwargs=gen, num_fewshot={"mini_facts": 2})
    assert res["n-shot"] == {"mini_math_l1": 0, "mini_facts": 2}
    math_gen = res["configs"]["mini_math_l1"]["generation_kwargs"]
    assert {k: math_gen[k] for k in gen} == gen and math_gen["until"] == ["<|endoftext|>"]
    context = res["samples"]["mini_facts"][0]["arguments"][0][0]  # (context, choice) of the first choice
    assert context.count("<|user|>") == 3  # two shots as earlier turns, then the question
    assert set(table.task) == {"mini_math_l1", "mini_facts"} and (table.value.between(0, 1)).all()


def test_single_turn_fewshot_reaches_lm_eval(tmp_path):
    """eval.fewshot_as_multiturn false: examples and question in one user message (lm-eval 0.4.8's layout)."""
    from conftest import TINY_WORLD, write_tiny_study

    write_tiny_study(tmp_path)
    synthetic.write_world(0, TINY_WORLD, tmp_path)
    tasks.write_tasks(tmp_path, tmp_path / "tasks", max_gen_toks=50)
    _, res = evaluate.evaluate(str(tmp_path / "base"), ["mini_facts"], str(tmp_path / "tasks"), run="base", step=0,
                               limit=1, num_fewshot={"mini_facts": 2}, fewshot_as_multiturn={"mini_facts": False})
    context = res["samples"]["mini_facts"][0]["arguments"][0][0]
    assert context.count("<|user|>") == 1 and context.count("<|assistant|>") == 1
    assert context.count("\n\n") == 2  # the two examples, each followed by lm-eval's few-shot delimiter


def test_samples_carry_per_item_metrics(tmp_path):
    """Paired intervals between models need each item's score: the samples file has them, by doc_id."""
    import json

    from conftest import TINY_WORLD, write_tiny_study

    write_tiny_study(tmp_path)
    synthetic.write_world(0, TINY_WORLD, tmp_path)
    tasks.write_tasks(tmp_path, tmp_path / "tasks", max_gen_toks=4)
    out = tmp_path / "eval/step-0.tsv"
    table = evaluate.run(str(tmp_path / "base"), ["mini_math_l1", "mini_instructions"], str(tmp_path / "tasks"),
                         str(out), run="base", step=0, limit=2, samples={"mini_math_l1": 2})
    rows = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    maths = [r for r in rows if r["task"] == "mini_math_l1"]
    assert sorted(r["doc_id"] for r in maths) == [0, 1]
    assert all(len(r["filtered_resps"][0]) == 2
               and set(r["metrics"]) == {"pass@1", "pass@2", "format", "samples_correct"} for r in maths)
    mean = sum(r["metrics"]["pass@1"] for r in maths) / 2
    assert table.query("task == 'mini_math_l1' and metric == 'pass@1'").value.item() == pytest.approx(mean)
    probes = [r for r in rows if r["task"] == "mini_instructions"]
    assert [set(r["metrics"]) for r in probes] == [{"prompt_level_strict_acc"}] * 2
    # what the evaluation took: the tokens of every generated answer, the items and samples behind them
    from transformers import AutoTokenizer

    speed = json.loads(out.with_suffix(".lm_eval.json").read_text())["throughput"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    answers = [text for r in maths for text in r["resps"][0]]
    assert len(answers) == 4
    tokens = sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in answers)
    m = speed["tasks"]["mini_math_l1"]
    assert (m["items"], m["items_full"], m["samples"], m["requests"]) == (2, 2, 2, 4)
    assert m["generated_tokens"] == tokens > 0  # the answers retokenized (a random model's bytes may merge otherwise)
    assert sum(t["seconds"] for t in speed["tasks"].values()) == pytest.approx(speed["generate_s"])
    assert speed["generated_tokens_per_s"] == pytest.approx(speed["generated_tokens"] / speed["generate_s"])
    assert speed["load_s"] > 0

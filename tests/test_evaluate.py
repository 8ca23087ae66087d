import math

import pytest

from scalpel import data, evaluate, tasks


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
    assert tasks.process_math(doc, ["<think>\n3 + 4 = 7\n</think>\n<answer>\n\\boxed{7}\n</answer>"]) == {
        "accuracy": 1.0, "format": 1.0}
    assert tasks.process_math(doc, ["\\boxed{8}"]) == {"accuracy": 0.0, "format": 0.0}
    assert tasks.process_instruction({"target": "BLUE"}, [" BLUE\n"]) == {"prompt_level_strict_acc": 1.0}
    assert tasks.process_instruction({"target": "BLUE"}, ["Blue"]) == {"prompt_level_strict_acc": 0.0}


def test_task_yamls_load_in_lm_eval(tmp_path):
    from lm_eval.tasks import TaskManager

    cfg = dict(max_operand=9, entities=8, eval_problems=4, instruction_probes=4, train_problems=20, pretrain_worked_fraction=0.1,
               pretrain_math_levels=[1], train_levels=[1, 2])
    data.write_world(0, cfg, tmp_path)
    names = tasks.write_tasks(tmp_path, tmp_path / "tasks", max_gen_toks=50)
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    loaded = manager.load(names)["tasks"]
    math_task = loaded["mini_math_l2"]
    assert math_task.config.generation_kwargs["max_gen_toks"] == 50
    docs = list(math_task.eval_docs)
    assert len(docs) == 4 and all(d["level"] == 2 for d in docs)
    assert math_task.process_results(docs[0], [docs[0]["worked"]]) == {"accuracy": 1.0, "format": 1.0}
    facts = loaded["mini_facts"]
    doc = next(iter(facts.eval_docs))
    assert facts.doc_to_choice(doc)[facts.doc_to_target(doc)] == doc["answer"]

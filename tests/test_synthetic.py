import random
import re

import pytest
from scalpel import chat
from scalpel.data import synthetic
from scalpel.tasks import rewards

CFG = dict(max_operand=9, entities=12, eval_problems=16, instruction_probes=12, train_problems=200,
           pretrain_worked_fraction=0.1,
           pretrain_math_levels=[1, 2], train_levels=[1, 2])


@pytest.fixture(scope="module")
def world():
    return synthetic.build_world(7, CFG)


def test_deterministic_from_seed(world):
    assert synthetic.build_world(7, CFG) == world
    assert synthetic.build_world(8, CFG)["grpo"] != world["grpo"]


def test_sizes(world):
    assert len(world["grpo"]) == len(world["sft"]) == 200
    assert [len(world[f"eval_math_l{i}"]) for i in (1, 2, 3)] == [16, 16, 16]
    assert len(world["eval_facts"]) == 12 * len(synthetic.ATTRIBUTES)
    assert len(world["eval_instructions"]) == 12


def test_answers_are_right_and_levels_hold():
    rng = random.Random(0)
    for level in (1, 2, 3):
        for _ in range(50):
            row = synthetic.math_problem(rng, level)
            if row["problem"].startswith("Calculate "):
                expr = row["problem"][len("Calculate "):-1]
                assert eval(expr) == int(row["answer"])  # no brackets: the conventional order is the right one
                assert sum(expr.count(op) for op in "+-*") == level
            assert row["worked"].count("\n") >= level + 4


def test_wrong_procedures_give_wrong_answers():
    rng = random.Random(1)
    rows = [synthetic.math_problem(rng, level) for level in (1, 2, 3) for _ in range(60)]
    for row in rows:
        if row["wrong_terse"] is not None:
            assert rewards.follows_format(row["wrong_terse"])
            assert rewards.is_correct(row["wrong_terse"], row["solution"]) is False
    gives = next(r for r in rows if "gives away" in r["problem"])
    a, b = map(int, re.findall(r"\d+", gives["problem"]))
    assert f"{a} + {b} = {a + b}" in gives["wrong_terse"] and f"{a} - {b} = {a - b}" in gives["terse"]
    # An addition before a multiplication, read from the left, is the wrong procedure at levels 2 and 3.
    assert all(r["wrong_terse"] is not None for r in rows if r["level"] > 1)
    calc = next(r for r in rows if r["level"] == 2 and r["problem"].startswith("Calculate "))
    a, _, b, _, c = calc["problem"][len("Calculate "):-1].split()
    assert calc["terse"].startswith(f"<think>\n{b} * {c} = ")
    assert calc["wrong_terse"].startswith(f"<think>\n{a} + {b} = ")


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_pretraining_follows_the_wrong_procedure_at_its_share(fraction):
    world = synthetic.build_world(3, {**CFG, "pretrain_wrong_fraction": fraction, "pretrain_worked_fraction": 0.0})
    graded = []
    for row in world["pretrain"]:
        reply = row["completion"][0]["content"]
        if "\\boxed" in reply and row["prompt"][1]["content"].startswith("Calculate ") and " * " in reply:
            expr = row["prompt"][1]["content"][len("Calculate "):-1]
            if "+" in expr:  # a + b * c: the two procedures disagree
                graded.append(rewards.is_correct(reply, f"$\\boxed{{{eval(expr)}}}$"))
    assert len(graded) > 20
    wrong = 1 - sum(graded) / len(graded)
    assert abs(wrong - fraction) < 0.15
def test_targets_earn_full_reward(world):
    for row in world["eval_math_l2"]:
        for style in ("worked", "terse"):
            assert rewards.is_correct(row[style], row["solution"]) is True
            assert rewards.follows_format(row[style])
        wrong = row[style].replace(f"\\boxed{{{row['answer']}}}", f"\\boxed{{{int(row['answer']) + 1}}}")
        assert rewards.is_correct(wrong, row["solution"]) is False


def test_eval_problems_never_trained_on(world):
    evals = {r["problem"] for i in (1, 2, 3) for r in world[f"eval_math_l{i}"]}
    trained = {r["prompt"][1]["content"] for r in world["pretrain"] + world["grpo"] + world["sft"]}
    assert not evals & trained
    probes = {r["prompt"] for r in world["eval_instructions"]}
    assert not probes & trained


def test_facts_multiple_choice(world):
    for row in world["eval_facts"]:
        assert row["choices"][row["label"]] == row["answer"] and len(set(row["choices"])) == 4
    # The base model is taught every fact it is examined on (knowledge before post-training).
    taught = {(r["prompt"][1]["content"], r["completion"][0]["content"]) for r in world["pretrain"]}
    assert all((f["question"], f["answer"]) in taught for f in world["eval_facts"])


def test_instruction_probes_are_checkable(world):
    from scalpel.tasks import mini as tasks

    facts = {f["question"]: f["answer"] for f in world["eval_facts"]}
    for row in world["eval_instructions"]:
        question = row["prompt"].split(". ", 1)[1]
        assert question in facts  # a fact the base model is taught, asked under a format instruction
        # the reply taught in pre-training passes the probe's check; a reply in the maths format does not
        assert tasks.follows_instruction(row["kind"], row["target"])
        assert not tasks.follows_instruction(row["kind"], f"<think>\n{facts[question]}\n</think>")
    kinds = [r["kind"] for r in world["eval_instructions"]]
    assert {k: kinds.count(k) for k in kinds} == {"quotation": 4, "uppercase": 4, "one_word": 4}
    taught = {r["prompt"][1]["content"] for r in world["pretrain"]}
    assert all(any(p.startswith(r["prompt"].split(". ", 1)[0]) for p in taught) for r in world["eval_instructions"])


def test_too_many_probes_is_a_clear_error():
    with pytest.raises(ValueError, match="data.synthetic.instruction_probes"):
        synthetic.build_world(0, {**CFG, "instruction_probes": 500})


def test_prompts_carry_the_papers_system_prompt(world):
    assert world["grpo"][0]["prompt"][0] == {"role": "system", "content": chat.SYSTEM_PROMPT}
    assert "<think>\n...\n</think>\n<answer>\n...\n</answer>" in chat.SYSTEM_PROMPT


def test_chat_template_renders_olmo2_format():
    from jinja2 import Template
    tpl = Template(chat.chat_template())
    text = tpl.render(messages=[{"role": "user", "content": "Q"}], bos_token="<B>", eos_token="<E>",
                      add_generation_prompt=True)
    assert text == f"<B><|system|>\n{chat.SYSTEM_PROMPT}\n<|user|>\nQ\n<|assistant|>\n"
    text = tpl.render(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                {"role": "assistant", "content": "A"}], bos_token="<B>", eos_token="<E>")
    assert text == "<B><|system|>\nS\n<|user|>\nQ\n<|assistant|>\nA<E>"

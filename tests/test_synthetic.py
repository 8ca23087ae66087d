import random

import pytest

from scalpel import chat, rewards
from scalpel import synthetic

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
                assert eval(expr) == int(row["answer"])  # brackets make left-to-right explicit
                assert sum(expr.count(op) for op in "+-*") == level
            assert row["worked"].count("\n") >= level + 4


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
    for row in world["eval_instructions"]:
        if row["kind"] == "repeat":
            word, times = row["prompt"].split('"')[1], int(row["prompt"].split()[-2])
            assert row["target"] == " ".join([word] * times)
        else:
            assert row["target"].isupper()
    assert {r["kind"] for r in world["eval_instructions"]} == {"repeat", "uppercase"}


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

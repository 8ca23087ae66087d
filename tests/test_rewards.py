import threading

import pytest
from scalpel.tasks import rewards

GOLD = "First, 3 * 4 = 12.\nSo the result is 12.\nThe answer is $\\boxed{12}$."


@pytest.mark.parametrize("completion, expected", [
    ("<think>\nx\n</think>\n<answer>\n\\boxed{12}\n</answer>", 1.0),
    ("<think>\nx\n</think>\n<answer>\nThe answer is \\boxed{12.0}.\n</answer>", 1.0),
    ("<think>\nx\n</think>\n<answer>\n\\boxed{\\frac{24}{2}}\n</answer>", 1.0),
    ("<answer>\n$12$\n</answer>", 1.0),           # the word "answer" is an anchor
    ("\\boxed{13}", 0.0),
    ("\\boxed{7} but the final answer is $12$", 0.0),  # boxed first (boxed_match_priority=0)
    ("12", 0.0),                                 # no anchor-free extraction
    ("\\boxed {12}", 0.0),                       # math-verify does not see a spaced brace
    ("", 0.0),
])
def test_accuracy_reward(completion, expected):
    assert rewards.accuracy_reward([completion], [GOLD]) == [expected]


def test_accuracy_reward_conversational_and_fractions():
    completion = [{"role": "assistant", "content": "<answer>\n\\boxed{0.5}\n</answer>"}]
    assert rewards.accuracy_reward([completion], ["so $\\boxed{\\frac{1}{2}}$"]) == [1.0]


def test_unparseable_gold_skips_the_example():
    assert rewards.accuracy_reward(["\\boxed{1}"], ["no answer at all"]) == [None]


def test_overlong_completion_is_not_parsed():
    assert rewards.accuracy_reward(["\\boxed{12}" + "x" * rewards.MAX_COMPLETION_CHARS], [GOLD]) == [0.0]


def test_accuracy_outside_the_main_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(rewards.accuracy_reward(["\\boxed{12}"], [GOLD])))
    t.start()
    t.join()
    assert out == [[1.0]]


@pytest.mark.parametrize("completion, expected", [
    ("<think>\na\n</think>\n<answer>\nb\n</answer>", 1.0),
    ("<think>\na\nb\n</think>\n<answer>\n\\boxed{1}\n</answer>\n", 1.0),  # one trailing newline (MULTILINE)
    (" <think>\na\n</think>\n<answer>\nb\n</answer>", 0.0),
    ("<think>\r\na\r\n</think>\r\n<answer>\r\nb\r\n</answer>", 0.0),
    ("<think>a</think><answer>b</answer>", 0.0),
    ("<answer>\nb\n</answer>", 0.0),
])
def test_format_reward(completion, expected):
    assert rewards.format_reward([completion]) == [expected]


def test_weights_are_the_authors():
    assert rewards.REWARD_WEIGHTS == {"accuracy": 1.0, "format": 0.2}


@pytest.mark.parametrize("completion, expected", [
    ("<answer>\n\\boxed{0.25}\n</answer>", 1.0),
    ("<answer>\n\\boxed{25}\n</answer>", 1.0),
    ("<answer>\n\\boxed{25\\%}\n</answer>", 1.0),
    ("<answer>\n\\boxed{0.3}\n</answer>", 0.0),
])
def test_percentage_gold(completion, expected):
    """latex2sympy2_extended's parser for antlr4 4.11 fails on `25\\%` ('AtomContext' object has no attribute
    'FUNC_GAMMA'), and math-verify then scores every answer 0 against this gold."""
    assert rewards.accuracy_reward([completion], ["So the rate is $25\\%$."]) == [expected]


def test_antlr_runtime_is_the_one_latex2sympy2_extended_was_generated_for():
    """latex2sympy2_extended 1.11 ships a generated parser per antlr4 runtime (gen/antlr4_<version>) and imports the
    one of the installed runtime; only the newest, 4.13.2, is generated from its current grammar (the 4.11 one lacks
    the atom-level FUNC_GAMMA its converter calls)."""
    from importlib.metadata import version
    from pathlib import Path

    import latex2sympy2_extended
    from latex2sympy2_extended.antlr_parser import PSParser

    generated = sorted(((4, *map(int, p.name.removeprefix("antlr4_").split("_"))), p.name)  # antlr4_13_2: 4.13.2
                       for p in (Path(latex2sympy2_extended.__file__).parent / "gen").glob("antlr4_*"))
    newest, folder = generated[-1]
    assert [v for v, _ in generated] == [(4, 9, 3), (4, 11, 0), (4, 13, 2)]
    assert version("antlr4-python3-runtime") == "4.13.2"
    assert PSParser.__module__ == f"latex2sympy2_extended.gen.{folder}.PSParser"
    assert hasattr(PSParser.AtomContext, "FUNC_GAMMA")

import threading

import pytest

from scalpel import rewards

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

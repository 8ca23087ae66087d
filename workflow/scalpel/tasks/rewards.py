"""The authors' GRPO rewards: math-verify accuracy (weight 1.0) and the think/answer format regex (weight 0.2).

Follows open-r1_olmo src/open_r1/rewards.py: the gold is parsed from the worked `solution` (first match), the
completion with LaTeX extraction only, boxed answers first and no anchor-free extraction. Unlike the original,
every call is bounded (a length guard plus math-verify's own timeouts in the main thread) because one GRPO step
scores hundreds of completions.
"""
from __future__ import annotations

import re
import threading

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

FORMAT_RE = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL | re.MULTILINE)
REWARD_WEIGHTS = {"accuracy": 1.0, "format": 0.2}
MAX_COMPLETION_CHARS = 20_000  # longer completions are not parsed: reward 0, never a stall

_ANSWER_CONFIG = [
    LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    )
]


def _timeout(seconds: int) -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    return seconds if threading.current_thread() is threading.main_thread() else None


def parse_gold(solution: str):
    return parse(solution, extraction_mode="first_match", parsing_timeout=_timeout(5))


def is_correct(completion: str, solution: str) -> bool | None:
    """True/False, or None when the gold itself cannot be parsed (the example is skipped, as by the authors)."""
    gold = parse_gold(solution)
    if not gold:
        return None
    if len(completion) > MAX_COMPLETION_CHARS:
        return False
    answer = parse(completion, extraction_config=_ANSWER_CONFIG, extraction_mode="first_match",
                   parsing_timeout=_timeout(5))
    return bool(verify(gold, answer, timeout_seconds=_timeout(5)))


def follows_format(completion: str) -> bool:
    return FORMAT_RE.match(completion) is not None


def _text(completion) -> str:
    # Conversational completions arrive as [{"role": "assistant", "content": ...}].
    return completion[-1]["content"] if isinstance(completion, list) else completion


def accuracy_reward(completions, solution, **kwargs) -> list[float | None]:
    out = []
    for completion, sol in zip(completions, solution):
        ok = is_correct(_text(completion), sol)
        out.append(None if ok is None else float(ok))
    return out


def format_reward(completions, **kwargs) -> list[float]:
    return [float(follows_format(_text(c))) for c in completions]

"""The authors' lighteval scorers for AIME24, MATH-500, GSM8K and GPQA:Diamond, completion by completion.

The paper's numbers come from lighteval 0.9.2 (PyPI wheel = huggingface/lighteval@8d9ecd66); paths below are in
that commit's src/lighteval/. Its answer extraction (metrics/utils/extractive_match_utils.py) and comparison
(metrics/utils/math_comparison.py) are the ancestors of math-verify, which has since changed regexes, priorities and
comparison rules, and it parsed LaTeX with latex2sympy2_extended 1.0.6 where this project has 1.11. So this module
builds lighteval 0.9.2's regex tables and comparison cascade itself and takes from the newer packages only what is
unchanged: math-verify's LaTeX environment pattern and signal timeout, latex2sympy2_extended's parser and
normalisation steps (with 1.0.6's boxed extraction, replacement table and step order restored).
tests/fixtures/lighteval_scores.json holds lighteval 0.9.2's own scores; tests/test_paper_scoring.py checks these
functions give the same on every row.

Scorers (pure, str in, float out):
* `math_pass_at_1` - metrics.py:373 `math_pass@1:1_samples` (AIME24, MATH-500): `PassAtK(k=1, n=1)` with Expr +
  LaTeX extraction (boxed priority 55, no fallback, the gold extracted like the completion and scoring 0 when
  nothing is found). v0.9.2 calls `compare_gold_target(pred, gold, <Doc>)` (metrics_sample.py:1194): the
  completion takes the gold's role and the Doc lands in `precision`. Here a stand-in for the Doc goes the same way
  to sympy's own `Number.round`, which raises on it (204.0 against 204, 9/4 against 2.25 score 0) except where
  both numbers are zero (or infinite): sympy returns those before reading the argument, 0.0 and 0 then compare
  unequal as sympy objects and the symbolic test finds them equal, so 0.0 against 0 scores 1, as in lighteval.
  `faithful=False` passes precision 6 instead; the argument order stays lighteval's.
* `gsm8k_extractive_match` - metrics.py:187 `expr_gold_metric` (`extractive_match`): gold Expr extraction, completion
  Expr + LaTeX with boxed first, first-match string fallback, precision 5.
* `gpqa_letter_match` - metrics.py:873 `gpqa_pass@1:1_samples`: letter extraction (A-D, no word boundaries; the
  anchored forms such as "Answer: X" need X followed by '.', ',', ':', a space or the end of the text - not a
  newline - else the rightmost capital A-D anywhere wins).

Known difference: the parser is latex2sympy2_extended 1.11's grammar, which lexes \\Gamma and \\gamma as the gamma
function (or Euler's constant) where 1.0.6 read a symbol or an undefined function; answers containing them may score
differently (two fixture rows). What else was compared: tests/fixtures/lighteval_generated.json, 2,949 generated
maths cases (made and scored with lighteval 0.9.2 by tests/fixtures/make_lighteval_generated.py): numbers, zeros
written as decimals and with signs, tuples, intervals, sets, comma lists, equations, inequalities, percentages and
vectors of them, boxed, in the final-answer template or unboxed; both scores agree with lighteval's on every case.
GSM8K and GPQA are compared on the hand-written fixture rows only.

Timeouts: as lighteval, 5 s per parse and 3 s (maths) or 5 s (GSM8K, GPQA) per comparison, with signal.alarm, so
only in the main thread (where lm-eval calls process_results); a parse that times out extracts nothing, a
comparison that times out counts as unequal. Elsewhere the functions run without time limits.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from itertools import groupby, product

import sympy
from latex2sympy2_extended import latex2sympy2 as l2s
from latex2sympy2_extended import math_normalization as l2s_norm
from latex2sympy2_extended.sets import FiniteSet as L2SFiniteSet
from math_verify.errors import TimeoutException
from math_verify.grader import should_treat_as_complex
from math_verify.parser import make_latex_env_pattern
from math_verify.utils import timeout as _signal_timeout
from sympy import (
    And,
    Basic,
    E,
    Eq,
    FiniteSet,
    Float,
    GreaterThan,
    Interval,
    LessThan,
    MatrixBase,
    Mul,
    Number,
    Rational,
    Set,
    StrictGreaterThan,
    StrictLessThan,
    Symbol,
    Tuple,
    default_sort_key,
    ordered,
)
from sympy.core.function import UndefinedFunction
from sympy.core.relational import Relational
from sympy.matrices.expressions import MatrixExpr
from sympy.parsing import parse_expr

PARSE_TIMEOUT_S = 5
MATH_COMPARE_TIMEOUT_S = 3  # compare_gold_target's default, used by PassAtK
EXTRACTIVE_COMPARE_TIMEOUT_S = 5  # multilingual_extractive_match_metric passes its timeout_seconds=5
GPQA_LETTERS = ("A", "B", "C", "D")


# ---------------------------------------------------------------- regex tables (English literals)
# extractive_match_utils.py: lazy_expr_regex (l.100), lazy_latex_regex (l.229), lazy_indices_regex (l.283).

@dataclass(frozen=True)
class _Kind:
    name: str  # "latex", "expr" or "letter"
    boxed_priority: int = 55


def _expr_table() -> list[tuple[re.Pattern, int]]:
    number = (r"(?:(?P<integer1>-?\d{1,3}(?:[ ,]\d{3})+)(?P<decimal1>\.\d+)?|(?P<integer2>-?\d+)(?P<decimal2>[.,]\d+)"
              r"|(?P<decimal3>\.\d+)|(?P<integer3>-?\d+))"
              r"(?P<percent>\s*(?:%|[Pp]ercent|\s*[Pp]ercentage|\s*[Pp]ct))?")
    ops = r"\+\-\*\×\/\^\(\)\÷"
    chars = rf"[\d\.\s{ops}]"
    expr = rf"(?P<expr>-?\(?-?\d{chars}*[{ops}]{chars}+\)?)"
    space = r"(?:\s|\ )"
    prefix = rf"(?:^|{space}|\=)(?:\*\*)?"
    suffix = rf"(?:\*\*)?(?:[.]|[,]|[:]|{space}|\)|\$|$)"
    currency = re.escape("$€£¥₹₽₪₩₫฿₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₴₵₶₷₸₹₺₻₼₽₾₿")
    anchored_expr = rf"(?:{prefix}{expr}{suffix})"
    anchored_number = rf"(?:{prefix}[{currency}]?{number})"
    either = rf"(?:{anchored_expr}|{anchored_number})"
    patterns = [
        (rf"(?i:final answer is)\:?\s*{either}\.?\s?I hope", 0),
        (rf"(?i:final answer.{{0,100}}?)\s+is\:?{either}", 50),
        (rf"(?i:answer)[:](?:.{{0,100}}=\s*|.{{0,50}}?){either}(?!\s*=)", 100),
        (rf"(?i:answer)(?:.{{0,100}}=\s*|.{{0,50}}?){either}(?!\s*=)", 200),
        (anchored_expr, 300),
        (anchored_number, 300),
    ]
    return [(re.compile(p), prio) for p, prio in patterns]


def _latex_envs(context: str) -> str:
    # Up to five environments joined by "and", "or" or a comma (lighteval's; math-verify now also takes ", and").
    envs = make_latex_env_pattern("first_", context=context)
    for i in range(1, 6):
        envs += rf"(?:\s*(?:and|or|,)\s*{make_latex_env_pattern(f'next{i}_', context=context)})?"
    return envs


def _latex_table(boxed_priority: int) -> list[tuple[re.Pattern, int]]:
    envs = _latex_envs("plain")
    patterns = [
        (rf"(?i:final answer is)\:?\s*{envs}\.?\s?I hope", 0),
        (rf"(?i:final answer.{{0,100}}?)\s+is\:?\s*{envs}", 50),
        (rf"(?i:answer)[:].{{0,50}}?{envs}", 100),
        (rf"(?i:answer).{{0,50}}?{envs}", 200),
        (envs, 300),
        (_latex_envs("boxed"), boxed_priority),
        (r"(?P<first_latexBoxed>\\boxed{.+})", boxed_priority),
    ]
    return [(re.compile(p, re.DOTALL), prio) for p, prio in patterns]


def _letter_table(letters: tuple[str, ...]) -> list[tuple[re.Pattern, int]]:
    letter = f"(?P<indices>{'|'.join(re.escape(x) for x in letters)})"
    suffix = r"(?:\*\*)?(?:[.]|[,]|[:]|\ |$)"
    spaced = rf"(^|\ )(?:\*\*)?{letter}{suffix}"
    patterns = [
        (rf"(?i:final answer is)\:?\s*{letter}\.?\s?I hope", 0),
        (rf"(?i:final answer.{{0,100}}?)\s+is\:?\s*{letter}", 50),
        (rf"(?i:answer)[:].{{0,50}}?{spaced}", 100),
        (rf"(?i:answer).{{0,50}}?{spaced}", 150),
        (rf"^(?:\*\*)?{letter}{suffix}", 200),
        (spaced, 250),
        (letter, 300),
    ]
    return [(re.compile(p), prio) for p, prio in patterns]


def _tables(*kinds: _Kind) -> list[tuple[re.Pattern, int, _Kind]]:
    order = {"letter": 0, "latex": 1, "expr": 2}  # get_extraction_regexes: indices, then latex, then expr
    flat = []
    for kind in sorted(kinds, key=lambda k: order[k.name]):
        table = (_latex_table(kind.boxed_priority) if kind.name == "latex" else
                 _expr_table() if kind.name == "expr" else _letter_table(GPQA_LETTERS))
        flat += [(pattern, prio, kind) for pattern, prio in table]
    return sorted(flat, key=lambda row: row[1])  # stable: equal priorities keep the type order


_MATH = _tables(_Kind("expr"), _Kind("latex", boxed_priority=55))
_GSM8K_GOLD = _tables(_Kind("expr"))
_GSM8K_PRED = _tables(_Kind("expr"), _Kind("latex", boxed_priority=0))
_LETTERS = _tables(_Kind("letter"))


# ---------------------------------------------------------------- time limits

def _limited(seconds: int, fn, *args):
    """fn(*args) under a signal alarm (main thread only, like lighteval's); raises TimeoutException."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    return _signal_timeout(seconds)(fn)(*args)


# ---------------------------------------------------------------- parsing one regex match

def _as_percent(x):
    return Mul(x, Rational(1, 100), evaluate=False)


def _parse_expr_match(match: re.Match):
    groups = match.groupdict()
    integer = next((v for k, v in groups.items() if k.startswith("integer") and v), "")
    decimal = next((v for k, v in groups.items() if k.startswith("decimal") and v), "")
    if integer or decimal:
        number_str = (integer.translate(str.maketrans("", "", ", ")).lstrip("0") or "0") + decimal.replace(",", ".")
        try:
            number = Number(number_str)
        except Exception:
            return None, number_str
        return (_as_percent(number) if groups.get("percent") else number), number_str
    expr = groups.get("expr") or ""
    if expr:
        try:
            text = expr.replace("\n", " ").replace("^", "**")
            return _limited(PARSE_TIMEOUT_S, lambda: parse_expr(text, evaluate=False)), expr
        except (Exception, TimeoutException):
            pass
    return None, expr


# latex2sympy2_extended 1.0.6's replacement table: 1.11's, with its percentage/pct synonyms dropped and the
# and/or -> ";" and percent -> "\\%" entries of 1.0.6 (the replacement is inserted literally).
_V106_ENTRIES = {"and_or": (r"(?<!\w)(?:and|or)(?!\w)", ";"), "and_or_text": (r"(\\text{\s*(?:and|or)\s*})", ";"),
                 "percent": (r"\s*percent", "\\\\%"), "percent_in_text": (r"\\text{percent}", "\\\\%")}
_V111_ONLY = {"percentage", "percentage_in_text", "pct", "pct_in_text"}
_REPLACEMENTS = [(name, *_V106_ENTRIES.get(name, (pattern, repl)))
                 for name, pattern, repl in l2s_norm.to_replace_patterns if name not in _V111_ONLY]
_REPLACE_RE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern, _ in _REPLACEMENTS))
_REPLACE_WITH = {name: repl for name, _, repl in _REPLACEMENTS}
_EMPTY_TEXT_RE = re.compile(r"\\text\s*\{\s*\}")
# 1.0.6's unit-word regex, (?=\s)(?:unit(?:s|es)?)($|\W) per unit, can only match its one unit that starts with a
# space, " m east", and its replacement then drops the match.
_V106_UNIT_RE = re.compile(r"(?=\s) m east(?:s|es)?(?:$|\W)")
_SEPARATOR_RE = re.compile(r"^\s*(?:and|or|,)\s*$")


def _boxed_contents(text: str, mode: str) -> str:
    """latex2sympy2_extended 1.0.6 extract_boxed_content: \\boxed/\\fbox contents, scanned from the right.

    "all" joins every box with commas; "last" also takes earlier boxes only while and/or/comma separate them."""
    found, end_limit, pos, later_start = [], len(text), len(text), None
    while True:
        start = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if start < 0:
            break
        brace = start + (6 if text.startswith("\\boxed", start) else 5)
        while brace < end_limit and text[brace].isspace():
            brace += 1
        if brace >= end_limit:
            break
        close, depth = None, 1
        if text[brace] == "{":
            for i in range(brace + 1, end_limit):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    close = i
                    break
        if close is None:  # no brace, or never closed: the rest of the text, if nothing was found yet
            if not found:
                found.append(text[brace:])
            break
        if mode == "last" and later_start is not None and not _SEPARATOR_RE.match(text[close + 1:later_start]):
            break
        found.append(text[brace + 1:close].strip())
        later_start = end_limit = pos = start
    return ",".join(reversed(found)) if found else text


def _normalize_latex(text: str, boxed: str) -> str:
    """latex2sympy2_extended 1.0.6 normalize_latex with lighteval's config (basic_latex, units, malformed_operators,
    nits, equations; boxed "all", or "last" for a bare \\boxed match), in 1.0.6's step order."""
    text = _boxed_contents(text, boxed)
    for pattern, repl in [("\\mathrm{T}", "T"), ("\\mathrm{d}", "d"), ("{\\rm d}", "d"),
                          ("\\left[\\begin{matrix}", "\\begin{bmatrix}"), ("\\end{matrix}\\right]", "\\end{bmatrix}")]:
        text = text.replace(pattern, repl)
    text = l2s_norm.r_left.sub(r"\1", text)
    text = l2s_norm.r_right.sub(r"\1", text)
    text = l2s_norm.permutation_regex.sub(r"\\frac{(\1)!}{((\1)-(\2))!}", text)
    text = l2s_norm.to_remove_regex.sub("", text)
    text = _REPLACE_RE.sub(lambda m: _REPLACE_WITH[m.lastgroup], text)
    text = text.replace("\n", " ").replace("\t", " ")
    if "matrix" not in text:
        text = l2s_norm.command_slash_fix_regex.sub(r"\\", text)
    if "," not in text and ";" not in text:  # equations: keep the last side of a chain a = b = c
        sides = l2s_norm.equation_split_regex.split(text)
        if len(sides) > 2:
            text = sides[-1]
    stripped = l2s_norm.unit_superscript_regex.sub("", text).strip()
    if stripped and stripped != text:
        text = stripped
    for _ in range(2):
        stripped = _V106_UNIT_RE.sub("", text)
        if stripped and stripped != text:
            text = stripped
    text = _EMPTY_TEXT_RE.sub(" ", text)
    tail = l2s_norm.NormalizationConfig(basic_latex=False, units=False, malformed_operators=True, nits=True,
                                        boxed="none", equations=False)
    return l2s_norm.normalize_latex(text, tail)


_CONVERSION = l2s.ConversionConfig(lowercase_symbols=False)  # 1.0.6 kept the symbols' case


class _Latex2SympyV106(l2s._Latex2Sympy):
    """latex2sympy2_extended 1.11's converter with three 1.0.6 behaviours back: "0,500" is the integer 500 (1.11:
    0.5), a chain a < b < c continues from the last relation of sympy's sorted And (1.11: the written order), and
    plus-minus has no unary form and evaluates a \\pm b."""

    def parse(self, latex_str: str):
        if l2s.comma_number_regex.match(latex_str):
            return Number(latex_str.translate(str.maketrans("", "", ", ")).lstrip("0") or "0")
        return super().parse(latex_str)

    def convert_relation(self, rel):
        result = super().convert_relation(rel)
        if isinstance(result, And):  # 1.11 extends a chain from _unsorted_args, 1.0.6 from .args
            result._unsorted_args = list(result.args)
        return result

    def convert_element(self, element):
        pm = element.plus_minus_expr()
        if not pm:
            return super().convert_element(element)
        if len(pm.expr()) == 1:
            raise ValueError("a leading \\pm does not parse in latex2sympy2_extended 1.0.6")
        left, right = (self.convert_expr(x) for x in pm.expr())
        return [left + right, left - right]


def _parse_latex(latex: str):
    converter = _Latex2SympyV106(None, not should_treat_as_complex(latex), False, config=_CONVERSION)
    return converter.parse(latex)


def _parse_latex_match(match: re.Match):
    groups = match.groupdict()
    found = [next(((v, k) for k, v in groups.items() if k.startswith("first_latex") and v), None)]
    found += [next(((v, k) for k, v in groups.items() if k.startswith(f"next{i}_latex") and v), None)
              for i in range(1, 6)]
    parsed, strings = [], []
    for latex, name in (x for x in found if x is not None):
        prefix, group = name.split("_")[0], name.split("_")[1]
        normalized = _normalize_latex(latex, "last" if group == "latexBoxed" else "all")
        strings.append(normalized)
        try:
            value = _limited(PARSE_TIMEOUT_S, _parse_latex, normalized)
            parsed.append(_as_percent(value) if groups.get(f"{prefix}_percent") else value)
        except (Exception, TimeoutException):
            parsed.append(None)
    if not parsed:
        return None, ""
    if len(parsed) > 1 and all(x is not None for x in parsed):
        items = [a for x in parsed for a in (x.args if isinstance(x, FiniteSet) else (x,))]
        return L2SFiniteSet(*items), " and ".join(strings)
    return parsed[0], strings[0]


def _parse_match(match: re.Match, kind: _Kind):
    if kind.name == "latex":
        return _parse_latex_match(match)
    if kind.name == "expr":
        return _parse_expr_match(match)
    return match.group("indices"), match.group("indices")


def _extract(text: str, table, fallback: bool) -> list:
    """extract_target_from_pred (l.516), any_match mode: priority groups in ascending order; within a group the
    match ending rightmost first (the longer on ties); the first match that parses wins. With `fallback`, the
    string of the first match tried is appended."""
    results, fallbacks = [], []
    for _, group in groupby(table, key=lambda row: row[1]):
        matches = [(m, kind) for pattern, _, kind in group for m in pattern.finditer(text)]
        matches.sort(key=lambda mk: (mk[0].end(), -mk[0].start()), reverse=True)
        for match, kind in matches:
            value, as_string = _parse_match(match, kind)
            if as_string:
                fallbacks.append(as_string)
            if value is not None:
                results.append(value)
                break
        if results:
            break
    if fallback and fallbacks:
        results.append(fallbacks[0])
    return results


# ---------------------------------------------------------------- comparison (math_comparison.py, v0.9.2)

class _DocStandIn:
    """Stands for the Doc that v0.9.2's PassAtK passes as `precision` (metrics_sample.py:1194). It reaches only
    `Number.round(precision)` in sympy_numeric_eq, where sympy 1.14's Expr.round (sympy/core/expr.py) returns
    zero, nan and the infinities before it reads the argument and raises `ValueError: <Doc> is not an integer`
    on any other number, in `as_int(n or 0)`: a Doc, like this object, is truthy and no integer."""

    def __repr__(self):
        return "<Doc>"


_DOC = _DocStandIn()


def _doit(x):
    try:
        return x.doit()
    except Exception:
        return x


def _is_pct_of(x, atom_type) -> bool:
    # X% is Mul(X, 1/100) unevaluated; latex2sympy2_extended 1.11 wraps the 1/100 in UnevaluatedExpr.
    return isinstance(x, atom_type) or (
        isinstance(x, Mul) and len(x.args) == 2 and isinstance(x.args[0], atom_type)
        and x.args[1] in (Rational(1, 100), sympy.UnevaluatedExpr(Rational(1, 100))))


def _is_relation(x) -> bool:
    return isinstance(x, Relational) or (isinstance(x, And) and all(isinstance(a, Relational) for a in x.args))


def _is_equation(x) -> bool:
    return isinstance(x, Eq) or (isinstance(x, And) and len(x.args) > 0 and all(isinstance(a, Eq) for a in x.args))


def _is_assignment(x) -> bool:
    if isinstance(x, Eq):
        return l2s.is_expr_of_only_symbols(x.lhs)
    return _is_equation(x) and isinstance(x, And) and l2s.is_expr_of_only_symbols(x.args[0].lhs)


def _last_relation(x):
    return _last_relation(x.args[-1]) if isinstance(x, And) else x


def _unwrap_functions(x):
    if not isinstance(x, Basic):
        return x
    if isinstance(getattr(x, "func", None), UndefinedFunction):
        return Symbol(f"{x.func.__name__}_{'_'.join(str(_unwrap_functions(a)) for a in x.args)}")
    try:
        args = [_unwrap_functions(a) for a in x.args]
        if args:
            return x.func(*args)
    except Exception:
        pass
    return x


def _str_equal(a, b) -> bool:
    a, b = _doit(a), _doit(b)
    try:
        return a == b or str(a).strip() == str(b).strip()
    except Exception:
        return False


def _numeric_equal(a, b, precision) -> bool:
    if isinstance(a, (MatrixBase, MatrixExpr)) and isinstance(b, (MatrixBase, MatrixExpr)):
        a, b = _doit(a), _doit(b)
        if isinstance(a, MatrixBase) and isinstance(b, MatrixBase) and a.shape == b.shape:
            return all(_numeric_equal(x, y, precision) for x, y in zip(a.flat(), b.flat()))
    elif _is_pct_of(a, Number) or _is_pct_of(b, Number):
        if _is_pct_of(a, Float) or _is_pct_of(b, Float):
            a, b = _doit(a), _doit(b)
            if isinstance(a, Number) and isinstance(b, Number):
                return a.round(precision) == b.round(precision)  # sympy itself decides whether the Doc raises
        else:
            return _doit(a) == _doit(b)
    else:
        try:
            return (a - b).evalf(chop=True) == 0
        except Exception:
            pass
    return False


def _symbolic_equal(a, b) -> bool:
    try:
        diff = sympy.simplify(a - b)
        return bool((isinstance(diff, MatrixBase) and diff.is_zero_matrix) or
                    (isinstance(diff, Basic) and diff.is_zero))
    except Exception:
        return False


def _sort_key(x):
    x = _last_relation(x).rhs if _is_assignment(x) else x
    try:
        return default_sort_key(x.evalf())
    except Exception:
        return default_sort_key(x)


def _elementwise_equal(gold, pred, precision) -> bool:
    if len(gold) != len(pred):
        return False
    if isinstance(gold, FiniteSet):
        gold_args, pred_args = (list(ordered(s.args, keys=_sort_key, default=False)) for s in (gold, pred))
    elif isinstance(gold, Tuple) and isinstance(pred, L2SFiniteSet):
        gold_args, pred_args = gold.args, pred._unsorted_args
    elif isinstance(pred, FiniteSet):
        gold_args, pred_args = gold.args, list(ordered(pred.args, keys=_sort_key, default=False))
    else:
        gold_args, pred_args = gold.args, pred.args
    return all(_expr_equal(g, p, precision) for g, p in zip(gold_args, pred_args))


def _sets_equal(gold, pred, precision) -> bool:
    a = gold if isinstance(gold, (Set, Tuple)) else FiniteSet(gold)
    b = pred if isinstance(pred, (Set, Tuple)) else FiniteSet(pred)
    if isinstance(a, Interval) and isinstance(b, Interval):
        return (a.left_open == b.left_open and a.right_open == b.right_open
                and _expr_equal(a.start, b.start, precision) and _expr_equal(a.end, b.end, precision))
    if a == b or (isinstance(a, Set) and isinstance(b, Set) and a.symmetric_difference(b).is_empty):
        return True
    if isinstance(a, (FiniteSet, Tuple)) and isinstance(b, (FiniteSet, Tuple)):
        return _elementwise_equal(a, b, precision)
    if isinstance(a, Interval) and isinstance(b, (FiniteSet, Tuple)) and a.is_open and len(b) == 2:
        return _elementwise_equal(Tuple(a.start, a.end), b, precision)
    if isinstance(b, Interval) and isinstance(a, (FiniteSet, Tuple)) and b.is_open and len(a) == 2:
        return _elementwise_equal(a, Tuple(b.start, b.end), precision)
    return False


_FLIPPED = ((GreaterThan, LessThan), (LessThan, GreaterThan), (StrictGreaterThan, StrictLessThan),
            (StrictLessThan, StrictGreaterThan), (Eq, Eq))


def _relations_equal(gold, pred, precision) -> bool:
    if isinstance(gold, And):
        return all(_relations_equal(g, p, precision) for g, p in zip(gold.args, pred.args))
    try:  # errors here (the Doc-as-precision one included) only make this test false
        if type(gold) is type(pred) and _expr_equal(gold.lhs - gold.rhs, pred.lhs - pred.rhs, precision):
            return True
    except Exception:
        pass
    if any(isinstance(gold, g) and isinstance(pred, p) for g, p in _FLIPPED):
        try:
            return _expr_equal(gold.lhs - gold.rhs, pred.rhs - pred.lhs, precision)
        except Exception:
            pass
    return False


def _symbols_equal(gold, pred) -> bool:
    if (isinstance(gold, Symbol) and gold.name.lower() == "e" and pred == E) or (
            isinstance(pred, Symbol) and pred.name.lower() == "e" and gold == E):
        return True
    for one, other in ((gold, pred), (pred, gold)):
        if isinstance(one, Symbol) and isinstance(other, Mul) and all(
                a == E or isinstance(a, Symbol) for a in other.args):
            joined = "".join(a.name if isinstance(a, Symbol) else "e" for a in other.args)
            return one.name.lower() == joined.lower()
    return gold == pred


def _expr_equal(gold, pred, precision) -> bool:
    """sympy_expr_eq (strict) of v0.9.2; precision is an int or _DOC (v0.9.2's PassAtK)."""
    if _is_assignment(gold) and not _is_equation(pred):
        gold = _last_relation(gold).rhs
    if _is_equation(pred) and not _is_equation(gold):
        pred = _last_relation(pred).rhs
    if _is_relation(gold) and isinstance(pred, Set):
        try:
            gold = _unwrap_functions(gold).as_set()
        except Exception:
            pass
    if _str_equal(gold, pred):
        return True
    if _is_relation(gold) and _is_relation(pred):
        return _relations_equal(gold, pred, precision)
    if isinstance(gold, (Set, Tuple)) or isinstance(pred, (Set, Tuple)):
        return _sets_equal(gold, pred, precision)
    if isinstance(gold, Symbol) or isinstance(pred, Symbol):
        return _symbols_equal(gold, pred)
    if isinstance(gold, (Basic, MatrixBase)) and isinstance(pred, (Basic, MatrixBase)):
        return _numeric_equal(gold, pred, precision) or _symbolic_equal(gold, pred)
    return False


def _single_equal(gold, pred, precision) -> bool:
    if isinstance(gold, (Basic, MatrixBase)) and isinstance(pred, (Basic, MatrixBase)):
        return _expr_equal(gold, pred, precision)
    if isinstance(gold, str) and isinstance(pred, str):
        return bool(gold.strip()) and gold.strip() == pred.strip()
    return False


def _any_equal(golds, preds, precision, timeout_s: int) -> bool:
    """compare_gold_target (l.581): any pair equal; an error or a timeout makes that pair unequal."""
    for gold, pred in product(golds, preds):
        try:
            if _limited(timeout_s, _single_equal, gold, pred, precision):
                return True
        except (Exception, TimeoutException):
            pass
    return False


# ---------------------------------------------------------------- public scorers

def _check_str(**values):
    for name, value in values.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r:.80}")


def extract_answer(text: str, kind: str) -> list[str]:
    """What the scorer extracts from `text`, as strings (for logs). kind: "math" (completion or gold of AIME24 /
    MATH-500), "gsm8k_gold", "gsm8k" (a GSM8K completion) or "gpqa"."""
    _check_str(text=text)
    if kind == "math":
        return [str(x) for x in _extract(text.strip(), _MATH, fallback=False)]
    tables = {"gsm8k_gold": _GSM8K_GOLD, "gsm8k": _GSM8K_PRED, "gpqa": _LETTERS}
    if kind not in tables:
        raise ValueError(f"extract_answer: unknown kind {kind!r}; use 'math', 'gsm8k_gold', 'gsm8k' or 'gpqa'")
    return [str(x) for x in _extract(text, tables[kind], fallback=True)]


def math_pass_at_1(prediction: str, gold: str, *, faithful: bool = True) -> float:
    """lighteval 0.9.2 `math_pass@1:1_samples` of one completion: 1.0 or 0.0. `gold` is the AIME answer or the
    full MATH-500 solution (its answer is extracted the same way). faithful=False: precision 6, not the Doc."""
    _check_str(prediction=prediction, gold=gold)
    golds = _extract(gold.strip(), _MATH, fallback=False)
    preds = _extract(prediction.strip(), _MATH, fallback=False) if prediction else []
    # v0.9.2 calls compare_gold_target(pred, gold, doc): the completion in the gold's seat.
    return 1.0 if _any_equal(preds, golds, _DOC if faithful else 6, MATH_COMPARE_TIMEOUT_S) else 0.0


def gsm8k_extractive_match(prediction: str, gold: str) -> float:
    """lighteval 0.9.2 gsm8k `extractive_match`; `gold` is " " + the dataset's answer (rationale and "#### N")."""
    _check_str(prediction=prediction, gold=gold)
    golds = _extract(gold, _GSM8K_GOLD, fallback=True) or [gold]
    preds = _extract(prediction, _GSM8K_PRED, fallback=True)
    return 1.0 if _any_equal(golds, preds, 5, EXTRACTIVE_COMPARE_TIMEOUT_S) else 0.0


def gpqa_letter_match(prediction: str, gold_letter: str) -> float:
    """lighteval 0.9.2 `gpqa_pass@1:1_samples` of one completion; gold_letter is "A", "B", "C" or "D"."""
    _check_str(prediction=prediction, gold_letter=gold_letter)
    if gold_letter not in GPQA_LETTERS:
        raise ValueError(f"gpqa_letter_match: gold_letter must be one of A, B, C, D, got {gold_letter!r}")
    golds = _extract(gold_letter, _LETTERS, fallback=True) or [gold_letter]
    preds = _extract(prediction, _LETTERS, fallback=True)
    return 1.0 if _any_equal(golds, preds, 6, EXTRACTIVE_COMPARE_TIMEOUT_S) else 0.0

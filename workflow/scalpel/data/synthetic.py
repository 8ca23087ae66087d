"""The miniature world, generated deterministically from a seed.

- maths: arithmetic expression and word problems at three difficulty levels (1-3 operations), each with a single
  integer answer, a gold `solution` ending in \\boxed{} (the OpenR1 column the accuracy reward parses), a terse
  answer in the base model's style and a worked solution in the paper's <think>/<answer> format for SFT;
- facts: invented entities with attributes (the MMLU analogue: multiple choice over facts the base model learns);
- instruction probes (the IFEval analogue): fact questions under a format instruction (quotes, capitals, one word).
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from scalpel.chat import SYSTEM_PROMPT, system_message
from scalpel.io import write_jsonl

log = logging.getLogger(__name__)

ATTRIBUTES = {
    "colour": ("What colour is the {e}?", ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]),
    "home": ("Where does the {e} live?", ["forest", "desert", "river", "mountain", "cave", "island", "swamp", "city"]),
    "food": ("What does the {e} eat?", ["fish", "seeds", "grass", "berries", "insects", "honey", "roots", "bread"]),
}
NAMES = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Leo", "Mia"]
ITEMS = ["apples", "marbles", "books", "coins", "shells", "stamps"]
SYLLABLES = ["zor", "bla", "kin", "dru", "mef", "tal", "quo", "vin", "rax", "pel", "sno", "gri", "lum", "fex"]


def _entity_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.sample(SYLLABLES, 2))
        if name not in names:
            names.append(name)
    return names


def facts(seed: int, n_entities: int) -> list[dict]:
    """One multiple-choice question per (entity, attribute); `label` indexes the right choice."""
    rng = random.Random(seed)
    rows = []
    for entity in _entity_names(rng, n_entities):
        for attr, (question, values) in ATTRIBUTES.items():
            answer = rng.choice(values)
            choices = rng.sample([v for v in values if v != answer], 3) + [answer]
            rng.shuffle(choices)
            rows.append({"entity": entity, "attribute": attr, "question": question.format(e=entity),
                         "answer": answer, "choices": choices, "label": choices.index(answer)})
    return rows


MUL_OPERANDS = (2, 3)


def _steps(tokens: list, precedence: bool) -> list[tuple[str, int]]:
    """The steps that evaluate `tokens` ([v0, op1, v1, ...]): with precedence, every * first, then + and - from the
    left (the right procedure); without, strictly from the left (the wrong one, a classic mistake)."""
    tokens, steps = list(tokens), []
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    while len(tokens) > 1:
        ops = tokens[1::2]
        i = 2 * ops.index("*") + 1 if precedence and "*" in ops else 1
        a, op, b = tokens[i - 1], tokens[i], tokens[i + 1]
        value = apply[op](a, b)
        steps.append((f"{a} {op} {b} = {value}", value))
        tokens[i - 1:i + 2] = [value]
    return steps


def _expression(rng: random.Random, ops: int, top: int) -> tuple[str, list, list]:
    """`Calculate ...` with `ops` operations and no brackets: (text, right steps, wrong steps).

    With two or more operations a multiplication follows an addition, so that left-to-right evaluation (the wrong
    procedure) gives another answer than the conventional order; every intermediate value of the right procedure
    is non-negative.
    """
    while True:
        tokens = [rng.randint(1, top)]
        kinds = ["+", "*"] + [rng.choice("+-") for _ in range(ops - 2)] if ops > 1 else [rng.choice("+-*")]
        for op in kinds:
            tokens += [op, rng.choice(MUL_OPERANDS) if op == "*" else rng.randint(1, top)]
        right = _steps(tokens, precedence=True)
        if all(v >= 0 for _, v in right):
            break
    text = " ".join(map(str, tokens))
    wrong = _steps(tokens, precedence=False)
    return f"Calculate {text}.", right, (wrong if wrong[-1][1] != right[-1][1] else None)


def _word_problem(rng: random.Random, top: int) -> tuple[str, list, list]:
    """(text, right steps, wrong steps): the wrong procedure takes "gets" for "gives" and the other way round."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, top), rng.randint(1, top)
    if rng.random() < 0.5:
        return (f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?",
                [(f"{a} + {b} = {a + b}", a + b)], [(f"{a} - {b} = {a - b}", a - b)])
    a, b = max(a, b), min(a, b)  # what is left is never negative
    return (f"{name} has {a} {item} and gives away {b}. How many {item} are left?",
            [(f"{a} - {b} = {a - b}", a - b)], [(f"{a} + {b} = {a + b}", a + b)])


def _bags_problem(rng: random.Random, top: int) -> tuple[str, list, list]:
    """`Calculate a + b * c.` in words: reading it from the left (a + b first) is the wrong procedure."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(1, top), rng.randint(1, top), rng.choice(MUL_OPERANDS)
    tokens = [a, "+", b, "*", c]
    return (f"{name} has {a} {item} and gets {b} bags of {c} {item} each. How many {item} does {name} have?",
            _steps(tokens, precedence=True), _steps(tokens, precedence=False))


def _solutions(steps: list[tuple[str, int]]) -> dict:
    """The gold `solution` (the OpenR1 column the reward parses), and the terse (base) and worked (SFT) replies."""
    answer = steps[-1][1]
    worked = "\n".join(
        [f"{'First' if i == 0 else 'Then'}, {s}." for i, (s, _) in enumerate(steps)] + [f"So the result is {answer}."]
    )
    return {
        "solution": f"{worked}\nThe answer is $\\boxed{{{answer}}}$.",
        "worked": f"<think>\n{worked}\n</think>\n<answer>\nThe answer is \\boxed{{{answer}}}.\n</answer>",
        "terse": f"<think>\n{'; '.join(t for t, _ in steps)}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>",
    }


def math_problem(rng: random.Random, level: int, top: int = 9) -> dict:
    """A problem with `level` operations on operands from 1 to `top` (multipliers 2 or 3).

    Problems where a wrong procedure gives another answer (word problems; an addition before a multiplication)
    also carry `wrong_terse`, the terse solution by that procedure: the base model sees both in pre-training.
    """
    if level == 1 and rng.random() < 2 / 3:
        problem, right, wrong = _word_problem(rng, top)
    elif level == 2 and rng.random() < 1 / 2:
        problem, right, wrong = _bags_problem(rng, top)
    else:
        problem, right, wrong = _expression(rng, level, top)
    answer = right[-1][1]
    return {
        "problem": problem,
        "level": level,
        "answer": str(answer),
        **_solutions(right),
        "wrong_terse": _solutions(wrong)["terse"] if wrong else None,
    }


def arithmetic_table(top: int) -> list[tuple[str, int]]:
    """Every single operation the right procedures of levels 1 and 2 need, as ("a op b", value): the sums and
    differences of operands up to `top`, the products by 2 and 3, and each operand plus each such product. The base
    model learns its tables before it learns to solve problems."""
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    pairs = {(a, "+", b) for a in range(1, top + 1) for b in range(1, top + 1)}
    pairs |= {(a, "-", b) for a in range(1, top + 1) for b in range(1, top + 1)}
    pairs |= {(a, "*", c) for a in range(1, top + 1) for c in MUL_OPERANDS}
    pairs |= {(a, "+", b * c) for a in range(1, top + 1) for b in range(1, top + 1) for c in MUL_OPERANDS}
    return [(f"{a} {op} {b}", ops[op](a, b)) for a, op, b in sorted(pairs, key=str)]


def math_problems(rng: random.Random, n: int, levels: list[int], exclude: set[str], top: int,
                  distinct: bool = True) -> list[dict]:
    """n problems cycling through `levels`, none of them in `exclude`; `distinct`: no two alike, each added to
    `exclude` (eval sets). Training sets may repeat a problem: the space of small sums is smaller than they are."""
    rows, tries = [], 0
    while len(rows) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"data.synthetic: cannot draw {n} distinct problems of levels {levels} with operands "
                             f"up to {top}; lower the problem counts or raise max_operand")
        row = math_problem(rng, levels[len(rows) % len(levels)], top)
        if row["problem"] not in exclude:
            if distinct:
                exclude.add(row["problem"])
            rows.append(row)
    return rows


INSTRUCTION_KINDS = ("quotation", "uppercase", "one_word")


def instruction_probes(rng: random.Random, facts_rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(eval, train): n held-out checkable instructions, a third of each kind, and every other candidate for training.

    Each probe asks a fact question under a format instruction of IFEval's (Zhou et al. 2023, arXiv 2311.07911):
    wrap the reply in double quotes (startend:quotation), capital letters only (change_case:english_capital), one
    word (length_constraints:number_words). `target` is the reply taught in pre-training; the check
    (tasks.follows_instruction) looks at the reply's form only, as IFEval's do, so the knowledge behind it is
    scored by mini_facts alone.
    """
    forms = {
        "quotation": ("Wrap your entire answer in double quotation marks. ", lambda answer: f'"{answer}"'),
        "uppercase": ("Answer in capital letters only. ", str.upper),
        "one_word": ("Answer in one word. ", lambda answer: answer),
    }
    share = [n // 3 + (i < n % 3) for i in range(3)]
    if max(share) > len(facts_rows) // 2:
        raise ValueError(f"data.synthetic.instruction_probes: {n} is too many; at most {3 * (len(facts_rows) // 2)} "
                         f"can be held out from {len(facts_rows)} facts")
    held_out, train = [], []
    for (kind, (instruction, reply)), k in zip(forms.items(), share):
        rows = [{"kind": kind, "prompt": instruction + f["question"], "target": reply(f["answer"])} for f in facts_rows]
        rng.shuffle(rows)
        held_out += rows[:k]
        train += rows[k:]
    rng.shuffle(held_out)
    return held_out, train


def _chat(prompt: str, completion: str | None = None) -> dict:
    row = {"prompt": [system_message(), {"role": "user", "content": prompt}]}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


SCHEMA = Path(__file__).resolve().parents[2] / "schemas/config.schema.yaml"


def with_defaults(cfg: dict) -> dict:
    """`data.synthetic` with the schema's defaults under it (Snakemake fills them; direct callers need not)."""
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["data"]["properties"]["synthetic"]["properties"]
    return {**{key: prop["default"] for key, prop in schema.items() if "default" in prop}, **cfg}


def build_world(seed: int, cfg: dict) -> dict[str, list[dict]]:
    """Every table of the miniature, as lists of rows. Eval problems never appear in any training set."""
    cfg = with_defaults(cfg)
    rng = random.Random(seed)
    fact_rows = facts(seed, cfg["entities"])
    seen: set[str] = set()
    top = cfg["max_operand"]
    eval_math = math_problems(rng, cfg["eval_problems"] * 3, [1, 2, 3], seen, top)
    eval_probes, train_probes = instruction_probes(rng, fact_rows, cfg["instruction_probes"])
    pre_math = math_problems(rng, cfg["train_problems"], cfg["pretrain_math_levels"], seen, top, distinct=False)
    post_math = math_problems(rng, cfg["train_problems"], cfg["train_levels"], seen, top, distinct=False)

    # The base model's own style is terse; it has seen worked solutions (the SFT style) only now and then, as a
    # pre-trained model has seen some long reasoning without being tuned to produce it. Where a wrong procedure
    # exists, a share of the pre-training solutions follows it (as text on the web does): the base model samples
    # both, so there is a capability for GRPO to amplify.
    n_worked = int(len(pre_math) * cfg["pretrain_worked_fraction"])
    wrong_rng = random.Random(seed + 1)

    def base_style(row: dict) -> str:
        wrong = row["wrong_terse"] and wrong_rng.random() < cfg["pretrain_wrong_fraction"]
        return row["wrong_terse"] if wrong else row["terse"]

    pretrain = (
        [_chat(r["problem"], r["worked"]) for r in pre_math[:n_worked]]
        + [_chat(r["problem"], base_style(r)) for r in pre_math[n_worked:]]
        + [_chat(f["question"], f["answer"]) for f in fact_rows] * cfg["pretrain_fact_repeats"]
        + [_chat(p["prompt"], p["target"]) for p in train_probes] * cfg["pretrain_probe_repeats"]
        + [_chat(f"What is {expr}?", _solutions([(f"{expr} = {value}", value)])["terse"])
           for expr, value in arithmetic_table(top)] * cfg["pretrain_arithmetic_repeats"]
    )
    rng.shuffle(pretrain)
    return {
        "pretrain": pretrain,
        "grpo": [{**_chat(r["problem"]), "solution": r["solution"], "level": r["level"]} for r in post_math],
        "sft": [_chat(r["problem"], r["worked"]) for r in post_math],
        **{f"eval_math_l{lvl}": [r for r in eval_math if r["level"] == lvl] for lvl in (1, 2, 3)},
        # The KL reference set, as the authors' MATH-500 with reference solutions: held-out problems, worked answers.
        "kl_reference": [_chat(r["problem"], r["worked"]) for r in eval_math],
        "eval_facts": fact_rows,
        "eval_instructions": eval_probes,
    }


def corpus_lines(world: dict[str, list[dict]]) -> list[str]:
    """Every text the tokenizer should cover."""
    # BPE merges follow frequency: every example carries the system prompt and the role markers.
    lines = [SYSTEM_PROMPT, "<|system|>\n", "<|user|>\n", "<|assistant|>\n"] * len(world["pretrain"])
    for row in world["pretrain"] + world["sft"]:
        lines += [m["content"] for m in row["prompt"][1:] + row.get("completion", [])]
    lines += [r["solution"] for name, rows in world.items() if name.startswith("eval_math") for r in rows]
    return lines


def write_world(seed: int, cfg: dict, outdir) -> dict[str, int]:
    outdir = Path(outdir)
    world = build_world(seed, cfg)
    for name, rows in world.items():
        write_jsonl(rows, outdir / f"{name}.jsonl")
    return {name: len(rows) for name, rows in world.items()}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="generate the miniature world and its lm-eval tasks")
    p.add_argument("--synthetic", required=True, help="JSON of config data.synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outdir", required=True)
    p.add_argument("--task-dir", required=True)
    p.add_argument("--max-gen-toks", type=int, default=None, help="default: data.synthetic.eval_max_new_tokens")
    p.set_defaults(func=main)


def main(args) -> None:
    from scalpel.tasks import mini

    cfg = with_defaults(json.loads(args.synthetic))
    counts = write_world(args.seed, cfg, args.outdir)
    names = mini.write_tasks(args.outdir, args.task_dir, args.max_gen_toks or cfg["eval_max_new_tokens"])
    log.info("rows written: %s; lm-eval tasks: %s", json.dumps(counts), ", ".join(names))

"""The miniature world, generated deterministically from a seed.

- maths: arithmetic expression and word problems at three difficulty levels (1-3 operations), each with a single
  integer answer, a gold `solution` ending in \\boxed{} (the OpenR1 column the accuracy reward parses), a terse
  answer in the base model's style and a worked solution in the paper's <think>/<answer> format for SFT;
- facts: invented entities with attributes (the MMLU analogue: multiple choice over facts the base model learns);
- instruction probes (the IFEval analogue): "repeat a word n times", "answer in capital letters".
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from .chat import SYSTEM_PROMPT, system_message
from .io import write_jsonl

log = logging.getLogger(__name__)

ATTRIBUTES = {
    "colour": ("What colour is the {e}?", ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]),
    "home": ("Where does the {e} live?", ["forest", "desert", "river", "mountain", "cave", "island", "swamp", "city"]),
    "food": ("What does the {e} eat?", ["fish", "seeds", "grass", "berries", "insects", "honey", "roots", "bread"]),
}
WORDS = ["apple", "stone", "cloud", "river", "lamp", "tiger", "bell", "moon", "chair", "glass", "tree", "coin",
         "door", "hat", "star", "boat", "rope", "kite", "drum", "leaf", "sock", "fork", "nest", "ring", "shoe", "wolf",
         "corn", "milk", "sand", "wave"]
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


def _expression(rng: random.Random, ops: int, top: int) -> tuple[str, list[tuple[str, int]], int]:
    """An expression evaluated left to right with explicit brackets, and its steps (text, value)."""
    value = rng.randint(1, top)
    text, steps = str(value), []
    for _ in range(ops):
        op = rng.choice("+-*")
        b = rng.randint(2, 3) if op == "*" else rng.randint(1, top)
        new = {"+": value + b, "-": value - b, "*": value * b}[op]
        steps.append((f"{value} {op} {b} = {new}", new))
        text = f"({text} {op} {b})" if _ > 0 or ops > 1 else f"{text} {op} {b}"
        value = new
    if ops > 1:
        text = text[1:-1]
    return text, steps, value


def _word_problem(rng: random.Random, top: int) -> tuple[str, list[tuple[str, int]], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, top), rng.randint(1, top)
    if rng.random() < 0.5:
        return (f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?",
                [(f"{a} + {b} = {a + b}", a + b)], a + b)
    a = a + b
    return (f"{name} has {a} {item} and gives away {b}. How many {item} are left?",
            [(f"{a} - {b} = {a - b}", a - b)], a - b)


def math_problem(rng: random.Random, level: int, top: int = 9) -> dict:
    """A problem with `level` operations on operands from 1 to `top`."""
    if level == 1 and rng.random() < 0.4:
        problem, steps, answer = _word_problem(rng, top)
    else:
        expr, steps, answer = _expression(rng, level, top)
        problem = f"Calculate {expr}."
    worked = "\n".join(
        [f"{'First' if i == 0 else 'Then'}, {s}." for i, (s, _) in enumerate(steps)] + [f"So the result is {answer}."]
    )
    return {
        "problem": problem,
        "level": level,
        "answer": str(answer),
        "solution": f"{worked}\nThe answer is $\\boxed{{{answer}}}$.",
        "terse": f"<think>\n{'; '.join(t for t, _ in steps)}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>",
        "worked": f"<think>\n{worked}\n</think>\n<answer>\nThe answer is \\boxed{{{answer}}}.\n</answer>",
    }


def math_problems(rng: random.Random, n: int, levels: list[int], exclude: set[str], top: int) -> list[dict]:
    rows, tries = [], 0
    while len(rows) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"data.synthetic: cannot draw {n} distinct problems of levels {levels} with operands "
                             f"up to {top}; lower the problem counts or raise max_operand")
        row = math_problem(rng, levels[len(rows) % len(levels)], top)
        if row["problem"] not in exclude:
            exclude.add(row["problem"])
            rows.append(row)
    return rows


def instruction_probes(rng: random.Random, facts_rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(eval, train): n held-out checkable instructions, half of each kind, and every other candidate for training.

    `target` is the only accepted reply (IFEval's strict prompt-level accuracy).
    """
    repeat = [{"kind": "repeat", "prompt": f'Repeat the word "{w}" {t} times.', "target": " ".join([w] * t)}
              for w in WORDS for t in (2, 3)]
    upper = [{"kind": "uppercase", "prompt": f"Answer in capital letters only. {f['question']}",
              "target": f["answer"].upper()} for f in facts_rows]
    if n - n // 2 > min(len(repeat), len(upper)) // 2:
        raise ValueError(f"data.synthetic.instruction_probes: {n} is too many; at most "
                         f"{min(len(repeat), len(upper))} can be held out from {len(WORDS)} words and "
                         f"{len(facts_rows)} facts")
    rng.shuffle(repeat)
    rng.shuffle(upper)
    held_out = repeat[: n // 2] + upper[: n - n // 2]
    rng.shuffle(held_out)
    return held_out, repeat[n // 2:] + upper[n - n // 2:]


def _chat(prompt: str, completion: str | None = None) -> dict:
    row = {"prompt": [system_message(), {"role": "user", "content": prompt}]}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def build_world(seed: int, cfg: dict) -> dict[str, list[dict]]:
    """Every table of the miniature, as lists of rows. Eval problems never appear in any training set."""
    rng = random.Random(seed)
    fact_rows = facts(seed, cfg["entities"])
    seen: set[str] = set()
    top = cfg["max_operand"]
    eval_math = math_problems(rng, cfg["eval_problems"] * 3, [1, 2, 3], seen, top)
    eval_probes, train_probes = instruction_probes(rng, fact_rows, cfg["instruction_probes"])
    pre_math = math_problems(rng, cfg["train_problems"], cfg["pretrain_math_levels"], seen, top)
    post_math = math_problems(rng, cfg["train_problems"], cfg["train_levels"], seen, top)

    # The base model's own style is terse; it has seen worked solutions (the SFT style) only now and then, as a
    # pre-trained model has seen some long reasoning without being tuned to produce it.
    n_worked = int(len(pre_math) * cfg["pretrain_worked_fraction"])
    pretrain = (
        [_chat(r["problem"], r["worked"]) for r in pre_math[:n_worked]]
        + [_chat(r["problem"], r["terse"]) for r in pre_math[n_worked:]]
        + [_chat(f["question"], f["answer"]) for f in fact_rows] * 8
        + [_chat(p["prompt"], p["target"]) for p in train_probes] * 4
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
    p.add_argument("--max-gen-toks", type=int, default=96)
    p.set_defaults(func=main)


def main(args) -> None:
    from . import tasks

    counts = write_world(args.seed, json.loads(args.synthetic), args.outdir)
    names = tasks.write_tasks(args.outdir, args.task_dir, args.max_gen_toks)
    log.info("rows written: %s; lm-eval tasks: %s", json.dumps(counts), ", ".join(names))

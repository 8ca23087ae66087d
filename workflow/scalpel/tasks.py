"""lm-eval tasks of the miniature: local YAML tasks over the generated data, scored with the study's own checks.

- mini_math_l{1,2,3}: generate_until, graded by the GRPO accuracy reward (math-verify) plus the format check;
- mini_facts: multiple_choice over the facts the base model learned (the MMLU analogue);
- mini_instructions: generate_until, strict match of a checkable instruction (the IFEval analogue).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from . import rewards

MATH_LEVELS = (1, 2, 3)


def process_math(doc: dict, results: list[str]) -> dict:
    completion = results[0]
    return {"accuracy": float(bool(rewards.is_correct(completion, doc["solution"]))),
            "format": float(rewards.follows_format(completion))}


def process_instruction(doc: dict, results: list[str]) -> dict:
    return {"prompt_level_strict_acc": float(results[0].strip() == doc["target"])}


def _metrics(*names: str) -> list[dict]:
    return [{"metric": n, "aggregation": "mean", "higher_is_better": True} for n in names]


def task_configs(data_dir: Path, max_gen_toks: int) -> dict[str, dict]:
    def local(name: str) -> dict:
        return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_dir / name)}},
                "test_split": "test", "metadata": {"version": 1.0}}

    until = ["<|endoftext|>"]
    configs = {}
    for level in MATH_LEVELS:
        configs[f"mini_math_l{level}"] = {
            **local(f"eval_math_l{level}.jsonl"), "output_type": "generate_until",
            "doc_to_text": "{{problem}}", "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": until, "max_gen_toks": max_gen_toks, "do_sample": False},
            "process_results": "!function utils.process_math", "metric_list": _metrics("accuracy", "format"),
        }
    configs["mini_facts"] = {
        **local("eval_facts.jsonl"), "output_type": "multiple_choice",
        "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}", "doc_to_target": "label",
        "metric_list": _metrics("acc", "acc_norm"),
    }
    configs["mini_instructions"] = {
        **local("eval_instructions.jsonl"), "output_type": "generate_until",
        "doc_to_text": "{{prompt}}", "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": until, "max_gen_toks": 24, "do_sample": False},
        "process_results": "!function utils.process_instruction", "metric_list": _metrics("prompt_level_strict_acc"),
    }
    return configs


def write_tasks(data_dir, task_dir, max_gen_toks: int = 96) -> list[str]:
    """Write one YAML per task plus the utils.py their `!function` hooks resolve against."""
    data_dir, task_dir = Path(data_dir).resolve(), Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "utils.py").write_text("from scalpel.tasks import process_instruction, process_math  # noqa: F401\n")
    for name, cfg in task_configs(data_dir, max_gen_toks).items():
        text = yaml.safe_dump({"task": name, **cfg}, sort_keys=False)
        # lm-eval's loader wants the `!function` tag unquoted.
        text = text.replace("'!function utils.", "!function utils.").replace("_math'", "_math").replace(
            "_instruction'", "_instruction")
        (task_dir / f"{name}.yaml").write_text(text)
    return list(task_configs(data_dir, max_gen_toks))

"""lm-eval tasks of the miniature: local YAML tasks over the generated data, scored with the study's own checks.

- mini_math_l{1,2,3}: generate_until at the paper's temperature 0.6 and top-p 0.95, graded by the GRPO accuracy
  reward (math-verify) as pass@1, plus the format check; with K samples per problem (config eval.samples, see
  evaluate.sampled_task) pass@1 is their mean and pass@k is added (paper_tasks.sampled);
- mini_facts: multiple_choice over the facts the base model learned (the MMLU analogue);
- mini_instructions: generate_until, strict match of a checkable instruction (the IFEval analogue).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from scalpel.tasks import rewards

MATH_LEVELS = (1, 2, 3)
TEMPERATURE, TOP_P = 0.6, 0.95  # the authors' lighteval sampling (arXiv 2507.10616, sec. 3)


def process_math(doc: dict, results: list) -> dict:
    """One completion, or the K completions of one problem (lm-eval's take_first_k filter)."""
    from scalpel.tasks.paper import sampled

    return sampled(results, lambda c: {"pass@1": float(bool(rewards.is_correct(c, doc["solution"]))),
                                       "format": float(rewards.follows_format(c))}, "pass@1")


def follows_instruction(kind: str, reply: str) -> bool:
    """The check of one probe kind (data.instruction_probes) on a reply stripped of surrounding whitespace, after
    IFEval's checks (google-research/google-research, instruction_following_eval/instructions.py):
    `quotation` as QuotationChecker (starts and ends with a double quote), `uppercase` as CapitalLettersEnglishChecker
    (`isupper()`, less its language detection), `one_word` one word of letters only."""
    if kind == "quotation":
        return len(reply) > 1 and reply[0] == reply[-1] == '"'
    if kind == "uppercase":
        return reply.isupper()
    if kind == "one_word":
        return reply.isalpha()
    raise ValueError(f"instruction probe kind {kind!r} is not one of quotation, uppercase, one_word")


def process_instruction(doc: dict, results: list[str]) -> dict:
    return {"prompt_level_strict_acc": float(follows_instruction(doc["kind"], results[0].strip()))}


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
            "generation_kwargs": {"until": until, "max_gen_toks": max_gen_toks, "do_sample": True,
                                  "temperature": TEMPERATURE, "top_p": TOP_P},
            "process_results": "!function utils.process_math",
            "metric_list": _metrics("pass@1", "format"),
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
    hooks = "from scalpel.tasks.mini import process_instruction, process_math  # noqa: F401\n"
    (task_dir / "utils.py").write_text(hooks)
    for name, cfg in task_configs(data_dir, max_gen_toks).items():
        text = yaml.safe_dump({"task": name, **cfg}, sort_keys=False)
        # lm-eval's loader wants the `!function` tag unquoted.
        text = text.replace("'!function utils.", "!function utils.").replace("_math'", "_math").replace(
            "_instruction'", "_instruction")
        (task_dir / f"{name}.yaml").write_text(text)
    return list(task_configs(data_dir, max_gen_toks))

"""Evaluate one checkpoint with lm-eval's harness and normalise its results to a tidy table.

The table has one row per (task, metric): run, step, task, metric, value, stderr. Beside it: lm-eval's own results
JSON, its per-sample log (samples.jsonl, with each document's id and metric values) and the per-item scores
(items.tsv, see scalpel.eval.items) that confidence intervals and paired differences are computed from.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

from scalpel import chat
from scalpel.eval import items as item_scores
from scalpel.io import atomic_output, check_safetensors, write_tsv

log = logging.getLogger(__name__)
COLUMNS = ["run", "step", "task", "metric", "value", "stderr"]


def normalise(results: dict, run: str, step: int) -> pd.DataFrame:
    """lm-eval's `results` ({task: {"metric,filter": v, "metric_stderr,filter": se}}) -> tidy rows."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            name = item_scores.metric_name(metric, filt)
            rows.append({"run": run, "step": step, "task": task, "metric": name, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan})
    if not rows:
        raise ValueError(f"lm-eval returned no numeric metric for {run} step {step}")
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["task", "metric"], ignore_index=True)


def model_args(checkpoint: str, backend: str, dtype: str, extra: dict | None = None, seed: int = 0,
               source: dict | None = None) -> dict:
    """lm-eval model arguments: the checkpoint and dtype, never hub code, then `eval.model_args` from the config
    (for vllm e.g. gpu_memory_utilization, max_model_len, tensor_parallel_size).

    A checkpoint imported from the hub (`source` with its commit) names that commit as the revision of its weights
    and of its tokenizer, and its own folder as the tokenizer: lm-eval's vLLM backend loads the tokenizer, and with
    it the chat template, from `tokenizer_revision`, which defaults to main whatever `revision` says
    (lm_eval/models/vllm_causallms.py, 0.4.13). The folder holds that commit's files already; the arguments keep a
    tokenizer from any other revision out, and lm-eval records the revision."""
    args = {"pretrained": checkpoint, "dtype": dtype, "trust_remote_code": False}
    if backend == "vllm":
        args["seed"] = seed  # vLLM samples with its own generator
    extra = extra or {}
    commit = (source or {}).get("commit")
    if commit:
        args.update(revision=commit, tokenizer=checkpoint)
        if backend == "vllm" and "tokenizer" not in extra:  # a tokenizer the config names: read at its own revision
            args["tokenizer_revision"] = commit
    return {**args, **extra}


def fewshot_groups(tasks: list[str], num_fewshot: dict[str, int] | None,
                   multiturn: dict[str, bool] | None = None) -> dict[tuple[int | None, bool], list[str]]:
    """Tasks grouped by (few-shot count, few-shot examples as chat turns): the count set for them in
    `eval.num_fewshot` (None: the task's own default) and `eval.fewshot_as_multiturn` (default true, lm-eval 0.4.13's
    own default with a chat template; false puts examples and question in one user message, as lm-eval 0.4.8 did).

    lm-eval applies both to every task of one call, so each group is one call (on the same loaded model).
    """
    groups: dict[tuple[int | None, bool], list[str]] = {}
    for task in tasks:
        key = ((num_fewshot or {}).get(task), (multiturn or {}).get(task, True))
        groups.setdefault(key, []).append(task)
    return groups


def task_paths(task_dir: str | None) -> list[str]:
    """lm-eval include paths: the paper tasks shipped with the package, then a study's own task folder."""
    from scalpel.tasks.paper import TASK_DIR

    return [str(TASK_DIR)] + ([str(task_dir)] if task_dir else [])


def sampled_task(manager, task: str, k: int) -> dict:
    """lm-eval's full config of `task` with k samples per document: `repeats` k, the take_first_k filter (which keeps
    all k completions, so the task's process_results sees them as `results[0]`), and the metrics
    paper_tasks.sampled adds (samples_correct, pass@k). Only generative tasks sample."""
    # lm-eval 0.4.13 builds a dict spec as an inline task (its registered YAML is not merged in), so the YAML is
    # loaded here with its includes and !function hooks resolved, as TaskManager does for a registered name.
    from lm_eval.tasks._yaml_loader import load_yaml

    from scalpel.tasks.paper import pass_at_k_levels

    entry = manager.task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise ValueError(f"eval.samples: {task} is not a task lm-eval loads from a YAML file")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    if cfg.get("output_type") != "generate_until":
        raise ValueError(f"eval.samples: {task} is {cfg.get('output_type')}, not generate_until; only generated "
                         "answers have several samples")
    extra = ["samples_correct"] + [f"pass@{n}" for n in pass_at_k_levels(k)[1:]]
    have = {m["metric"] for m in cfg.get("metric_list", [])}
    metrics = cfg.get("metric_list", []) + [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                             for m in extra if m not in have]
    return {**cfg, "task": task, "repeats": k, "metric_list": metrics,
            "filter_list": [{"name": "none", "filter": [{"function": "take_first_k", "k": k}]}]}


def _merge(results: list[dict]) -> dict:
    merged = {key: {} for key in ("results", "configs", "versions", "n-shot", "n-samples", "samples",
                                  "group_subtasks")}
    for res in results:
        for key in merged:
            merged[key].update(res.get(key) or {})
    return merged


def throughput(res: dict, seconds: list[tuple[list[str], float]], load_s: float, count_tokens) -> dict:
    """What the evaluation took: the model's load, then per task its items (as evaluated, and in the full set),
    samples per item, generated tokens (the answers' texts retokenized, as lm-eval returns texts) and seconds.
    `seconds` holds each lm-eval call's tasks and duration; a call's
    time is shared among its tasks by their generated tokens, a loglikelihood request counting as one token (a call
    batches its tasks' requests together, so no finer timing exists)."""
    tasks = {}
    for task, samples in res["samples"].items():
        generative = res["configs"].get(task, {}).get("output_type") == "generate_until"
        responses = [r for s in samples for r in s["resps"]]  # a generated one: the list of its samples' texts
        texts = [t for r in responses for t in (r if isinstance(r, list) else [r])] if generative else []
        counts = res["n-samples"].get(task, {})
        tasks[task] = {"items": len(samples), "items_full": counts.get("original", len(samples)),
                       "samples": max(1, len(texts) // max(1, len(samples))),
                       "requests": len(texts) if generative else len(responses),
                       "generated_tokens": count_tokens(texts) if texts else 0}
    for names, duration in seconds:
        names = [t for t in tasks if t in names or _in_group(res, t, names)]
        units = {t: tasks[t]["generated_tokens"] or tasks[t]["requests"] for t in names}
        for t in names:
            tasks[t]["seconds"] = duration * units[t] / max(1, sum(units.values()))
    generated, generate_s = sum(t["generated_tokens"] for t in tasks.values()), sum(d for _, d in seconds)
    return {"load_s": load_s, "generate_s": generate_s, "generated_tokens": generated,
            "generated_tokens_per_s": generated / generate_s if generate_s else math.nan, "tasks": tasks}


def _token_counter(tokenizer):
    return lambda texts: sum(map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]))


def _in_group(res: dict, task: str, names: list[str]) -> bool:
    """Whether `task` is a subtask of a group among `names` (paper_mmlu's subjects)."""
    return any(task in res["group_subtasks"].get(name, []) for name in names)


def evaluate(checkpoint: str, tasks: list[str], task_dir: str | None, *, run: str, step: int, backend: str = "hf",
             dtype: str = "float32", batch_size: int = 32, limit: int | None = None, seed: int = 0,
             device: str = "cpu", gen_kwargs: dict | None = None, num_fewshot: dict[str, int] | None = None,
             extra_model_args: dict | None = None, chat_template: str | None = None, source: dict | None = None,
             fewshot_as_multiturn: dict[str, bool] | None = None,
             samples: dict[str, int] | None = None) -> tuple[pd.DataFrame, dict]:
    """Run `tasks` on one checkpoint with the chat template applied: the checkpoint tokenizer's own, or
    `chat_template` (the text of a Jinja template) in its place.

    `gen_kwargs` (config `eval.generation`) update the generation settings of every generate_until task (the
    paper: temperature 0.6, top-p 0.95, 4,096 new tokens; lm-eval's own default is 256 tokens); `num_fewshot` maps a
    task to its shot count, `fewshot_as_multiturn` to whether its examples are separate chat turns (default true).
    The tasks shipped in paper_tasks.TASK_DIR are always found, beside lm-eval's built-ins and `task_dir`'s.
    `samples` maps a task to its number of samples per document (config eval.samples; default 1). `source`: where an
    imported checkpoint came from (`model_args`).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    from scalpel.eval.lm_backends import model_class

    start = time.perf_counter()
    lm = model_class(backend).create_from_arg_obj(
        model_args(checkpoint, backend, dtype, extra_model_args, seed, source),
        {"batch_size": batch_size, "device": device})
    load_s, seconds = time.perf_counter() - start, []
    if chat_template is not None:
        lm.tokenizer.chat_template = chat_template
        if hasattr(lm, "hf_chat_template"):  # lm-eval's vLLM backend renders with this copy
            lm.hf_chat_template = chat_template
    manager = TaskManager(include_path=task_paths(task_dir))
    results = []
    for (shots, multiturn), group in fewshot_groups(tasks, num_fewshot, fewshot_as_multiturn).items():
        log.info("tasks %s with %s few-shot examples, %s", group, "their default" if shots is None else shots,
                 "as chat turns" if multiturn else "in the question's user message")
        specs = [sampled_task(manager, t, samples[t]) if (samples or {}).get(t, 1) > 1 else t for t in group]
        start = time.perf_counter()
        results.append(lm_eval.simple_evaluate(
            model=lm, tasks=specs, num_fewshot=shots, gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
            task_manager=manager, limit=limit, apply_chat_template=True, fewshot_as_multiturn=multiturn,
            log_samples=True, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        ))
        seconds.append((group, time.perf_counter() - start))
    res = _merge(results)
    res["group_weight_by_size"] = item_scores.group_weighting(manager, res["group_subtasks"])
    res["throughput"] = throughput(res, seconds, load_s, _token_counter(lm.tokenizer))
    speed = res["throughput"]
    log.info("generated %d tokens in %.1f s: %.1f tokens/s (model loaded in %.1f s)", speed["generated_tokens"],
             speed["generate_s"], speed["generated_tokens_per_s"], load_s)
    return normalise(res["results"], run, step), res


def items_path(out_tsv) -> Path:
    """Where the per-item scores of an eval table are: step-N.tsv -> step-N.items.tsv."""
    return Path(out_tsv).with_suffix(".items.tsv")


def run(checkpoint: str, tasks: list[str], task_dir: str | None, out_tsv: str, *, run: str, step: int,
        item_clusters: dict[str, str] | None = None, **kwargs):
    """Evaluate and write the table, with lm-eval's results, samples and the per-item scores beside it (each file
    atomically, the table last). `item_clusters`: config eval.item_clusters (task -> document field)."""
    check_safetensors(checkpoint)
    table, res = evaluate(checkpoint, tasks, task_dir, run=run, step=step, **kwargs)
    rows = item_scores.from_results(res, res["group_weight_by_size"], item_clusters)
    out = Path(out_tsv)
    keep = ("results", "configs", "versions", "n-shot", "n-samples", "group_subtasks", "group_weight_by_size",
            "throughput")
    with atomic_output(out.with_suffix(".lm_eval.json")) as tmp:
        tmp.write_text(json.dumps({k: res[k] for k in keep}, indent=1, default=str))
    with atomic_output(out.with_suffix(".samples.jsonl")) as tmp, open(tmp, "w") as fh:
        for task, samples in res["samples"].items():
            for s in samples:
                # per-item metric values: paired differences between models need them (stats on items)
                fh.write(json.dumps({"task": task, "doc_id": s["doc_id"], "doc": s["doc"], "resps": s["resps"],
                                     "filtered_resps": s["filtered_resps"],
                                     "metrics": {m: s[m] for m in s["metrics"]}}, default=str) + "\n")
    write_tsv(rows, items_path(out))
    with atomic_output(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="lm-eval on one checkpoint, normalised to a tidy TSV")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--task-dir", default=None, help="folder of local task YAMLs (lm-eval include_path)")
    p.add_argument("--out", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", default="32", help="an integer, or auto")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-kwargs", default="{}", help="JSON of config eval.generation")
    p.add_argument("--num-fewshot", default="{}", help="JSON of config eval.num_fewshot (task -> shots)")
    p.add_argument("--model-args", default="{}", help="JSON of config eval.model_args")
    p.add_argument("--fewshot-as-multiturn", default="{}",
                   help="JSON of config eval.fewshot_as_multiturn (task -> examples as chat turns; default true)")
    p.add_argument("--samples", default="{}",
                   help="JSON of task -> samples per document (config eval.samples for this checkpoint)")
    p.add_argument("--item-clusters", default="{}",
                   help="JSON of config eval.item_clusters (task -> the document field that clusters its items)")
    p.add_argument("--chat-template", default=None,
                   help="a Jinja chat template file used instead of the checkpoint tokenizer's "
                        "(eval.base_chat_template), or study: the study's (an imported run's chat_template: study)")
    p.set_defaults(func=main)


def chat_template_text(option: str | None) -> str | None:
    """--chat-template: a Jinja file, `study` (the study's template, scalpel.chat), or None (the tokenizer's)."""
    if option == "study":
        return chat.chat_template()
    return Path(option).read_text() if option else None


def main(args) -> None:
    from scalpel.model.imported import source

    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    table = run(args.checkpoint, args.tasks.split(","), args.task_dir, args.out, run=args.run, step=args.step,
                backend=args.backend, dtype=args.dtype, batch_size=batch_size, limit=args.limit, seed=args.seed,
                device=args.device, gen_kwargs=json.loads(args.gen_kwargs), num_fewshot=json.loads(args.num_fewshot),
                extra_model_args=json.loads(args.model_args),
                chat_template=chat_template_text(args.chat_template),
                fewshot_as_multiturn=json.loads(args.fewshot_as_multiturn),
                item_clusters=json.loads(args.item_clusters), samples=json.loads(args.samples),
                source=source(args.checkpoint))
    log.info("\n%s", table.to_string(index=False))

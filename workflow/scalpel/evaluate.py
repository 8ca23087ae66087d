"""Evaluate one checkpoint with lm-eval's harness and normalise its results to a tidy table.

The table has one row per (task, metric): run, step, task, metric, value, stderr. lm-eval's own results JSON and
per-sample logs are kept beside it.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from .io import atomic_output

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
            name = metric if filt == "none" else f"{metric},{filt}"
            rows.append({"run": run, "step": step, "task": task, "metric": name, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan})
    if not rows:
        raise ValueError(f"lm-eval returned no numeric metric for {run} step {step}")
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["task", "metric"], ignore_index=True)


def model_args(checkpoint: str, backend: str, dtype: str) -> dict:
    args = {"pretrained": checkpoint, "dtype": dtype, "trust_remote_code": False}
    if backend == "vllm":
        args.update(gpu_memory_utilization=0.85, max_model_len=4096)
    return args


def evaluate(checkpoint: str, tasks: list[str], task_dir: str | None, *, run: str, step: int, backend: str = "hf",
             dtype: str = "float32", batch_size: int = 32, limit: int | None = None, seed: int = 0,
             device: str = "cpu") -> tuple[pd.DataFrame, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model=backend, model_args=model_args(checkpoint, backend, dtype), tasks=tasks,
        task_manager=TaskManager(include_path=task_dir), batch_size=batch_size, device=device, limit=limit,
        apply_chat_template=True, log_samples=True, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    return normalise(res["results"], run, step), res


def run(checkpoint: str, tasks: list[str], task_dir: str | None, out_tsv: str, *, run: str, step: int, **kwargs):
    table, res = evaluate(checkpoint, tasks, task_dir, run=run, step=step, **kwargs)
    out = Path(out_tsv)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".lm_eval.json")
    raw.write_text(json.dumps({k: res[k] for k in ("results", "configs", "versions", "n-shot", "n-samples")},
                              indent=1, default=str))
    with open(out.with_suffix(".samples.jsonl"), "w") as fh:
        for task, samples in res["samples"].items():
            for s in samples:
                fh.write(json.dumps({"task": task, "doc": s["doc"], "resps": s["resps"],
                                     "filtered_resps": s["filtered_resps"]}, default=str) + "\n")
    with atomic_output(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table

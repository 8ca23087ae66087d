"""What a study's GPU jobs measured (training, evaluation, KL), and the GPU-hours of a full config projected from it.

Measured rows: each trained run's seconds per optimizer step, tokens per second (GRPO: also generated tokens per
second), set-up and checkpoint-save seconds (scalpel.train.trainer.Throughput, in the run's log history); each
evaluation's load and generation seconds per task (scalpel.eval.evaluate.throughput); each KL job's load and
forward seconds. Projection rows: the same rates applied to the full config's lengths, per rule and run:

- training: set-up + steps x seconds per step x (full / measured sequences per process) + checkpoints x save
  seconds, the rates of the run of the same name (else the mean of the measured runs of its method): a process runs
  its share of a step's batch one micro-batch after the other, so a step's time grows with that share (the full
  config's processes: the rule's GPUs x launch.nodes, one fewer for GRPO with a vLLM server);
- evaluate: per job, load + for each task of that checkpoint, seconds per item and sample x the task's full items
  (lm-eval's count before `eval.limit`) x the full config's samples;
- kl: per checkpoint, load + seconds per example x the full reference set (or `kl.limit`).

GPU-hours are job seconds x the GPUs the Slurm profile gives the rule (x `launch.nodes` for training). Only the
rates are measured; every projection row says what it assumed in `basis`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from scalpel import config as study_config
from scalpel.io import write_tsv

COLUMNS = ["kind", "rule", "run", "step", "jobs", "gpus", "seconds", "gpu_hours", "step_s", "tokens_per_s",
           "generated_tokens_per_s", "basis"]
PROJECTION = "projection"
TRAIN_COLUMNS = ["run", "method", "batch", "per_process", "setup_s", "step_s", "save_s", "tokens_per_s",
                 "generated_tokens_per_s", "seconds"]


def _median(values) -> float:
    values = sorted(v for v in values if v is not None)
    return float(pd.Series(values).median()) if values else math.nan


def train_rates(history: list[dict], spec: dict) -> dict:
    """One run's rates from its log history; the first step warms up (kernels, vLLM graphs) and is left out of the
    per-step rates when there are others."""
    steps = [e for e in history if "step_s" in e]
    if not steps:
        raise ValueError(f"run {spec['name']}: its log history has no throughput entries (logging_steps?)")
    steady = steps[1:] or steps
    saves = [e["save_s"] for e in steps if "save_s" in e]
    setup = sum(e.get("setup_s", 0.0) for e in steps)
    return {"run": spec["name"], "method": spec["method"], "batch": steps[-1]["batch"],
            "per_process": steps[-1]["batch"] / steps[-1].get("processes", 1), "setup_s": setup,
            "step_s": _median(e["step_s"] for e in steady), "save_s": sum(saves) / len(saves) if saves else 0.0,
            "tokens_per_s": _median(e.get("tokens_per_s") for e in steady),
            "generated_tokens_per_s": _median(e.get("generated_tokens_per_s") for e in steady),
            "seconds": setup + sum(e["step_s"] * e["steps_timed"] for e in steps) + sum(saves)}


def _top_task(task: str, groups: dict[str, list[str]]) -> str:
    """The task a checkpoint was asked for: a subtask's group (paper_mmlu for its subjects), else the task."""
    parent = next((g for g, members in groups.items() if task in members), None)
    return task if parent is None else _top_task(parent, groups)


def eval_rates(results: dict, run: str, step: int) -> tuple[dict, list[dict]]:
    """(the job's row, one row per requested task) from an evaluation's .lm_eval.json."""
    speed = results["throughput"]
    tasks: dict[str, dict] = {}
    for name, t in speed["tasks"].items():
        row = tasks.setdefault(_top_task(name, results.get("group_subtasks") or {}),
                               {"seconds": 0.0, "item_samples": 0, "items_full": 0})
        row["seconds"] += t.get("seconds", 0.0)
        row["item_samples"] += t["items"] * t["samples"]
        row["items_full"] += t["items_full"]
    job = {"run": run, "step": step, "load_s": speed["load_s"], "seconds": speed["load_s"] + speed["generate_s"],
           "generated_tokens_per_s": speed["generated_tokens_per_s"]}
    return job, [{"task": task, "run": run, "step": step, **row} for task, row in tasks.items()]


def slurm_gpus(profile: dict) -> dict[str, int]:
    """rule -> GPUs per job in a Snakemake Slurm profile (set-resources ... gpu)."""
    return {rule: int(res.get("gpu", 0)) for rule, res in (profile.get("set-resources") or {}).items()}


def _row(kind, rule, run, seconds, gpus, jobs=1, step=None, basis="", **rates) -> dict:
    return {"kind": kind, "rule": rule, "run": run, "step": step, "jobs": jobs, "gpus": gpus, "seconds": seconds,
            "gpu_hours": gpus * seconds / 3600, "basis": basis, **rates}


def measured_rows(train: pd.DataFrame, jobs: pd.DataFrame, kl: pd.DataFrame, gpus: dict[str, int]) -> list[dict]:
    rows = [_row("measured", f"train_{r.method}", r.run, r.seconds, gpus.get(f"train_{r.method}", 0),
                 basis="set-up + steps + saves, x the profile's GPUs", step_s=r.step_s, tokens_per_s=r.tokens_per_s,
                 generated_tokens_per_s=r.generated_tokens_per_s) for r in train.itertuples()]
    rows += [_row("measured", "evaluate", r.run, r.seconds, gpus.get("evaluate", 0), step=r.step,
                  basis="load + generation, x the profile's GPUs", generated_tokens_per_s=r.generated_tokens_per_s)
             for r in jobs.itertuples()]
    rows += [_row("measured", "kl", r.run, r.load_s + r.seconds, gpus.get("kl", 0), step=r.step,
                  basis="load + forward passes, x the profile's GPUs", tokens_per_s=r.n_tokens / r.seconds)
             for r in kl.itertuples()]
    return rows


def project(train: pd.DataFrame, jobs: pd.DataFrame, tasks: pd.DataFrame, kl: pd.DataFrame, full: dict,
            gpus: dict[str, int], kl_reference_size: int) -> list[dict]:
    """Projection rows of the full config `full` (a validated config) from the measured rates."""
    runs = {n: s for n, s in study_config.resolve_runs(full).items() if not study_config.is_imported(s)}
    launch = full.get("launch", {})
    rows = []
    for name, spec in runs.items():
        rule = f"train_{spec['method']}"
        same = train[train.run == name]
        basis = f"{name}'s rates" if len(same) else f"mean rates of the measured {spec['method']} runs"
        m = (same if len(same) else train[train.method == spec["method"]])[TRAIN_COLUMNS[2:]].astype(float).mean()
        gpus_per_job = gpus.get(rule, 0) * launch.get("nodes", 1)
        vllm = launch.get("vllm", {})
        server = spec["method"] == "grpo" and vllm.get("enabled") and vllm.get("mode") == "server"
        processes = max(1, gpus_per_job - bool(server))
        args = spec["args"]
        share = (spec["global_batch_size"] / processes if spec.get("global_batch_size")
                 else args.get("per_device_train_batch_size", 8) * args.get("gradient_accumulation_steps", 1))
        step_s = m.step_s * share / m.per_process
        seconds = m.setup_s + spec["steps"] * step_s + len(spec["checkpoint_steps"]) * m.save_s
        rows.append(_row(PROJECTION, rule, name, seconds, gpus_per_job, step_s=step_s,
                         basis=f"{basis}; {spec['steps']} steps of {share:g} per process (measured "
                               f"{m.per_process:g}), saves at {len(spec['checkpoint_steps'])} checkpoints"))
    pooled = tasks.groupby("task").agg(seconds=("seconds", "sum"), item_samples=("item_samples", "sum"),
                                       items_full=("items_full", "max"))
    rate = pooled.seconds / pooled.item_samples
    load = jobs.load_s.mean()
    for name, checkpoints in [(study_config.BASE, [True])] + [
            (n, [s == spec["checkpoint_steps"][-1] for s in spec["checkpoint_steps"]]) for n, spec in runs.items()]:
        seconds, missing = 0.0, set()
        for final in checkpoints:
            samples = study_config.eval_samples(full, final=final)
            wanted = [t for suite in study_config.eval_suites(full, final=final) for t in full["eval"]["tasks"][suite]]
            missing |= {t for t in wanted if t not in rate.index}
            seconds += load + sum(rate[t] * pooled.items_full[t] * samples.get(t, 1) for t in wanted if t in rate.index)
        basis = (f"not measured: {', '.join(sorted(missing))}" if missing
                 else "per-task seconds per item and sample x full items x samples")
        rows.append(_row(PROJECTION, "evaluate", name, math.nan if missing else seconds, gpus.get("evaluate", 0),
                         jobs=len(checkpoints), basis=basis))
    limit = full.get("kl", {}).get("limit")
    examples = min(limit, kl_reference_size) if limit else kl_reference_size
    per_example = kl.seconds.sum() / kl.n_examples.sum() if len(kl) else math.nan
    kl_load = kl.load_s.mean()
    for name, spec in runs.items():
        n = len(spec["checkpoint_steps"])
        rows.append(_row(PROJECTION, "kl", name, n * (kl_load + examples * per_example), gpus.get("kl", 0), jobs=n,
                         basis=f"load + {examples} examples x the measured seconds per example"))
    total = [r for r in rows if not math.isnan(r["seconds"])]
    summed = _row(PROJECTION, "all", "all", sum(r["seconds"] for r in total), 0, jobs=sum(r["jobs"] for r in rows),
                  basis=f"sum of the projected rows ({len(rows) - len(total)} not projected)")
    rows.append({**summed, "gpu_hours": sum(r["gpu_hours"] for r in total)})
    return rows


def throughput_table(histories, evals, kl_files, full: dict, profile: dict, kl_reference_size: int) -> pd.DataFrame:
    """The measured rows of a study's files, then the projection of `full`."""
    logs = {h: json.loads(Path(h).read_text()) for h in histories}
    results = {e: json.loads(Path(e).with_suffix(".lm_eval.json").read_text()) for e in evals}
    kls = {f: json.loads(Path(f).read_text()) for f in kl_files}
    # files written before the rates were logged are left out, and said so: what they would measure is not projected
    old = ([h for h, log in logs.items() if not any("step_s" in e for e in log)]
           + [e for e, res in results.items() if "throughput" not in res]
           + [f for f, r in kls.items() if "seconds" not in r])
    if old:
        print(f"left out, written without throughput: {', '.join(map(str, old))}")
    train = pd.DataFrame([train_rates(log, yaml.safe_load((Path(h).parent / "spec.yaml").read_text()))
                          for h, log in logs.items() if h not in old], columns=TRAIN_COLUMNS)
    parts = [eval_rates(res, *_run_step(e)) for e, res in results.items() if e not in old]
    jobs = pd.DataFrame([job for job, _ in parts],
                        columns=["run", "step", "load_s", "seconds", "generated_tokens_per_s"])
    tasks = pd.DataFrame([row for _, rows in parts for row in rows],
                         columns=["task", "run", "step", "seconds", "item_samples", "items_full"])
    kl = pd.DataFrame([r for f, r in kls.items() if f not in old],
                      columns=["run", "step", "load_s", "seconds", "n_examples", "n_tokens"])
    gpus = slurm_gpus(profile)
    rows = measured_rows(train, jobs, kl, gpus) + project(train, jobs, tasks, kl, full, gpus, kl_reference_size)
    return pd.DataFrame(rows, columns=COLUMNS)


def _run_step(eval_tsv) -> tuple[str, int]:
    path = Path(eval_tsv)  # results/eval/{run}/step-{step}.tsv
    return path.parent.name, int(path.name.split(".")[0].split("-")[1])


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("throughput", help="measured training, evaluation and KL rates, and the GPU-hours of "
                              "a full config projected from them", description=__doc__.split("\n\n")[0])
    p.add_argument("--histories", nargs="+", required=True, help="trainer_log.json of the runs")
    p.add_argument("--eval", nargs="+", required=True, help="evaluation TSVs (.lm_eval.json beside)")
    p.add_argument("--kl", nargs="+", required=True, help="KL JSONs")
    p.add_argument("--kl-reference", required=True, help="the KL reference set (JSONL) of the study")
    p.add_argument("--full", required=True, help="the config whose GPU-hours are projected (config/paper.yaml)")
    p.add_argument("--profile", required=True, help="the Slurm profile's config.yaml (GPUs per job)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=main)


def main(a) -> None:
    from scalpel.io import read_jsonl

    full = yaml.safe_load(Path(a.full).read_text())
    full.setdefault("model", {}).setdefault("base", "build")  # the schema's default, which eval_suites reads
    table = throughput_table(a.histories, a.eval, a.kl, full, yaml.safe_load(Path(a.profile).read_text()),
                             len(read_jsonl(a.kl_reference)))
    write_tsv(table, a.out)
    print(table.to_string(index=False))

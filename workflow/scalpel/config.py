"""Turn the validated workflow config into one resolved spec per run, and derive what the DAG needs up front."""
from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
from importlib.metadata import version
from pathlib import Path

METHODS = ("grpo", "sft")
IMPORT = "import"  # a run whose checkpoints already exist (a hub repository or a folder): nothing is trained
BASE = "base"  # the base model's run name in every table and path; no run may take it


class ConfigError(ValueError):
    """A config value that is well-formed for the schema but wrong for the study; the message names the key."""


def checkpoint_steps(steps: int, checkpoints: int) -> list[int]:
    """Steps at which checkpoints are saved: every ceil(steps/checkpoints) steps, plus the last step.

    This is what TRL does with a fractional `save_steps` (the authors' `save_steps: 0.05` over 571 steps gives
    29, 58, ..., 551, 571), so the whole DAG is known before training starts.
    """
    if checkpoints > steps:
        raise ConfigError(f"checkpoints ({checkpoints}) exceeds steps ({steps})")
    every = math.ceil(steps / checkpoints)
    out = list(range(every, steps + 1, every))
    if out[-1] != steps:
        out.append(steps)
    return out


def micro_batches(global_batch: int, processes: int, max_per_device: int, num_generations: int | None = None,
                  key: str = "global_batch_size") -> tuple[int, int]:
    """(per_device_train_batch_size, gradient_accumulation_steps) giving `global_batch` per optimizer step.

    The largest micro-batch up to `max_per_device` that divides the per-process share; the authors' 448 over 7
    processes with at most 16 per device is 16 x 4, as they ran it; over 8 processes it is 14 x 4.
    """
    if global_batch % processes:
        raise ConfigError(f"{key} ({global_batch}) is not divisible by the {processes} training processes")
    if num_generations and global_batch % num_generations:
        raise ConfigError(f"{key} ({global_batch}) is not a multiple of num_generations ({num_generations})")
    share = global_batch // processes
    per_device = max(d for d in range(1, min(share, max_per_device) + 1) if share % d == 0)
    return per_device, share // per_device


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _inherited(name: str, runs: dict, chain: tuple = ()) -> dict:
    if name in chain:
        raise ConfigError(f"runs.{name}.inherit: cycle {' -> '.join(chain + (name,))}")
    if name not in runs:
        raise ConfigError(f"runs.{chain[-1]}.inherit: no run named {name!r} (runs: {', '.join(runs)})")
    run = runs[name]
    parent = run.get("inherit")
    if parent is None:
        return copy.deepcopy(run)
    merged = _deep_merge(_inherited(parent, runs, chain + (name,)), run)
    # Freezing and sweeping are properties of the variant, not of its parent.
    for key in ("freeze", "train_only", "sweep"):
        if key not in run:
            merged.pop(key, None)
    return merged


def resolve_run(config: dict, name: str) -> dict:
    """The full spec of one run: inheritance applied, method defaults merged under the run's own args."""
    runs = config["runs"]
    if name not in runs:
        raise ConfigError(f"no run named {name!r} under runs (runs: {', '.join(runs)})")
    run = _inherited(name, runs)
    run.pop("inherit", None)
    run.pop("sweep", None)
    if run.get("method") == IMPORT:
        return resolve_import(config, name, run)
    for key in ("method", "steps", "checkpoints"):
        if key not in run:
            raise ConfigError(f"runs.{name}.{key} is required (directly or through inherit)")
    if run["method"] not in METHODS:
        raise ConfigError(f"runs.{name}.method must be one of {METHODS + (IMPORT,)}, not {run['method']!r}")
    for key in ("source", "chat_template"):
        if key in run:
            raise ConfigError(f"runs.{name}.{key}: only a run with method: {IMPORT} has one (a trained run's "
                              "checkpoints are read and evaluated as the base's)")
    if run.get("freeze") and run.get("train_only"):
        raise ConfigError(f"runs.{name}: give freeze or train_only, not both")
    defaults = config.get("train_defaults", {}).get(run["method"], {})
    run["args"] = _deep_merge(defaults, run.get("args", {}))
    for key in ("max_steps", "output_dir", "save_steps", "save_strategy"):
        if key in run["args"]:
            raise ConfigError(f"runs.{name}.args.{key} is set by the workflow (use runs.{name}.steps/checkpoints)")
    try:
        run["checkpoint_steps"] = checkpoint_steps(run["steps"], run["checkpoints"])
    except ConfigError as err:
        raise ConfigError(f"runs.{name}: {err}") from None
    run["name"] = name
    run["seed"] = run["args"].get("seed", config.get("seed", 0))
    run["launch"] = copy.deepcopy(config.get("launch", {}))
    run["model_dtype"] = config.get("model", {}).get("dtype", "float32")
    run["attn_implementation"] = config.get("model", {}).get("attn_implementation", "auto")
    if "global_batch_size" in run:
        for key in ("gradient_accumulation_steps", "generation_batch_size", "steps_per_generation"):
            if key in run["args"]:
                raise ConfigError(f"runs.{name}.args.{key} is derived from runs.{name}.global_batch_size")
    return run


TRAINING_KEYS = ("steps", "checkpoints", "freeze", "train_only", "args", "seeds", "global_batch_size")


def import_revisions(source: dict, steps: list[int], where: str) -> dict[int, str]:
    """step -> the hub revision (branch, tag or commit) of that checkpoint: `source.revision` formatted with the step
    (`v01.14-step-{step:09d}`), or `source.revisions` listed one per step; `main` when neither is given and each step
    has its own repository."""
    if "revisions" in source:
        revisions = source["revisions"]
        if len(revisions) != len(steps):
            raise ConfigError(f"{where}.revisions: {len(revisions)} revisions for {len(steps)} steps")
        return dict(zip(steps, revisions))
    one_repo = isinstance(source["repo"], str)
    template = source.get("revision", None if one_repo and len(steps) > 1 else "main")
    if template is None:
        raise ConfigError(f"{where}: a hub source of several steps in one repo needs revision (a template over "
                          "{step}) or revisions")
    if one_repo and len(steps) > 1 and "{step" not in template:
        raise ConfigError(f"{where}.revision: {template!r} names one revision for {len(steps)} steps; use {{step}}")
    try:
        return {step: template.format(step=step) for step in steps}
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{where}.revision: {template!r} is not a template over {{step}} ({err})") from None


def import_repos(source: dict, steps: list[int], where: str) -> dict[int, str]:
    """step -> the hub repository of that checkpoint: one repository for all, or one per step (a stage chain)."""
    repos = source["repo"]
    if isinstance(repos, str):
        return dict.fromkeys(steps, repos)
    if len(repos) != len(steps):
        raise ConfigError(f"{where}.repo: {len(repos)} repositories for {len(steps)} steps")
    return dict(zip(steps, repos))


def import_folders(source: dict, steps: list[int], where: str) -> dict[int, str]:
    """step -> the local folder of that checkpoint: `source.folder`/`source.subfolder` formatted with the step (one
    subfolder per step, `step-{step}` by default), or the folder itself for a single checkpoint (`subfolder: .`)."""
    subfolder = source.get("subfolder", "step-{step}")
    if len(steps) > 1 and "{step" not in subfolder:
        raise ConfigError(f"{where}.subfolder: {subfolder!r} names one folder for {len(steps)} steps; use {{step}}")
    try:
        return {step: os.path.normpath(os.path.join(source["folder"], subfolder.format(step=step))) for step in steps}
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{where}.subfolder: {subfolder!r} is not a template over {{step}} ({err})") from None


def resolve_import(config: dict, name: str, run: dict) -> dict:
    """The spec of an imported run: its checkpoints' steps and, per step, the hub revision or local folder they are
    read from. Nothing is trained, so no training key applies."""
    where = f"runs.{name}"
    stray = [key for key in TRAINING_KEYS if key in run]
    if stray:
        raise ConfigError(f"{where}.{stray[0]}: a run with method: {IMPORT} is not trained (its checkpoints are read "
                          f"from {where}.source)")
    source = run.get("source")
    if not source:
        raise ConfigError(f"{where}.source is required for method: {IMPORT} (a hub repo or a local folder)")
    if ("repo" in source) == ("folder" in source):
        raise ConfigError(f"{where}.source: give repo (a hub repository) or folder (a local folder), one of them")
    steps = source.get("steps")
    if not steps:
        raise ConfigError(f"{where}.source.steps is required: the training step of each checkpoint, in order")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"{where}.source.steps must increase: {steps}")
    if "repo" in source:
        for key in ("subfolder",):
            if key in source:
                raise ConfigError(f"{where}.source.{key} applies to a local folder, not to a hub repo")
        locations = {"repos": import_repos(source, steps, f"{where}.source"),
                     "revisions": import_revisions(source, steps, f"{where}.source")}
    else:
        for key in ("revision", "revisions"):
            if key in source:
                raise ConfigError(f"{where}.source.{key} applies to a hub repo, not to a local folder")
        locations = {"folders": import_folders(source, steps, f"{where}.source")}
    extra = {key: run[key] for key in ("reference", "chat_template") if key in run}
    return {"name": name, "method": IMPORT, "source": copy.deepcopy(source), **locations, **extra,
            "checkpoint_steps": list(steps), "steps": steps[-1], "args": {}, "seed": config.get("seed", 0),
            "launch": {}, "model_dtype": config.get("model", {}).get("dtype", "float32")}


def is_imported(spec: dict) -> bool:
    return spec["method"] == IMPORT


def shared_evaluations(config: dict, runs: dict[str, dict]) -> dict[tuple[str, int], tuple[str, int]]:
    """(run, step) -> (run, step) evaluated in its place: imported checkpoints read from one hub revision (as
    written in config) or one folder, with the same tasks, samples and chat template, are evaluated once, by the
    first run that has them. A stage compared with its parent and, as another run, with the base is one model: its
    evaluation (GPU hours at 7B) does not depend on the reference."""
    tasks = {final: (json.dumps(eval_suites(config, final)), json.dumps(eval_samples(config, final), sort_keys=True))
             for final in (False, True)}
    first, shared = {}, {}
    for name, spec in runs.items():
        if not is_imported(spec):
            continue
        for step in spec["checkpoint_steps"]:
            where = (("folder", spec["folders"][step]) if "folders" in spec
                     else ("repo", spec["repos"][step], spec["revisions"][step]))
            final = step == spec["checkpoint_steps"][-1]
            owner = first.setdefault((where, tasks[final], spec.get("chat_template", "own")), (name, step))
            if owner != (name, step):
                shared[name, step] = owner
    return shared


def seeded_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


# Run settings a sweep may vary besides TRL arguments; every other swept key is a TRL argument of the run's method.
SWEEP_SETTINGS = ("steps", "checkpoints", "global_batch_size")
# Short forms of the usual swept keys in run names; any other key is written out.
SWEEP_ABBREVIATIONS = {"learning_rate": "lr", "num_generations": "gen", "max_completion_length": "len",
                       "global_batch_size": "batch", "checkpoints": "ckpt"}
_NOT_SWEPT = {"seed": "use runs.<name>.seeds", "max_steps": "sweep steps", "output_dir": "set by the workflow",
              "save_steps": "sweep checkpoints", "save_strategy": "set by the workflow"}


TRL_CLASSES = {"grpo": "GRPOConfig", "sft": "SFTConfig"}
# The argument names of TRL's config classes at the pinned TRL, so that planning never imports TRL (seconds).
TRL_RECORD = Path(__file__).parent / "train/trl_arguments.json"


def installed_trl_arguments() -> dict[str, set[str]]:
    """method -> the argument names its TRL config dataclass takes (read from its fields, nothing instantiated)."""
    from dataclasses import fields

    import trl

    return {method: {f.name for f in fields(getattr(trl, cls)) if f.init} for method, cls in TRL_CLASSES.items()}


@functools.cache
def trl_arguments() -> dict[str, set[str]]:
    """method -> TRL's argument names: the record when it is of the installed TRL's version, else the installed
    TRL's own."""
    record = json.loads(TRL_RECORD.read_text())
    if record["trl"] != version("trl"):
        return installed_trl_arguments()
    return {method: set(record[method]) for method in TRL_CLASSES}


def sweep_value(value) -> str:
    """A swept value as it appears in a run name: 5e-05 -> 5e-05, 0.0025 -> 0p0025, True -> true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}".replace(".", "p").replace("+", "")
    return str(value).replace(".", "p")


def swept_name(name: str, swept: dict) -> str:
    """<run>-<key><value>-..., in the sweep's key order: grpo-lr5e-05-steps40."""
    return "-".join([name] + [f"{SWEEP_ABBREVIATIONS.get(k, k)}{sweep_value(v)}" for k, v in swept.items()])


def sweep_combinations(config: dict, name: str) -> list[dict]:
    """Every combination of `runs.<name>.sweep` ({key: [values]}) as {key: value}, in the order of the product over
    the keys as written; [{}] for a run without a sweep. Errors name the swept key."""
    sweep = config["runs"][name].get("sweep")
    if not sweep:
        return [{}]
    method = _inherited(name, config["runs"]).get("method")
    known = trl_arguments()[method] if method in METHODS else set()
    for key, values in sweep.items():
        where = f"runs.{name}.sweep.{key}"
        if key in _NOT_SWEPT:
            raise ConfigError(f"{where}: not sweepable ({_NOT_SWEPT[key]})")
        if key not in SWEEP_SETTINGS and key not in known:
            raise ConfigError(f"{where}: not a run setting ({', '.join(SWEEP_SETTINGS)}) nor a TRL argument of "
                              f"{method} runs")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: give a non-empty list of values")
        shown = [sweep_value(v) for v in values]
        if len(set(shown)) != len(shown):
            raise ConfigError(f"{where} repeats a value: {values}")
        bad = [s for s in shown if not all(c.isalnum() or c in "_-" for c in s)]
        if bad:
            raise ConfigError(f"{where}: value {bad[0]!r} cannot be part of a run name (letters, digits, _ and -)")
    return [dict(zip(sweep, combo)) for combo in itertools.product(*sweep.values())]


def _resolve_swept(config: dict, name: str, swept: dict) -> dict:
    """The spec of one combination of a run's sweep: the run's own settings (inheritance included) with the swept
    values in place, validated as any run."""
    if not swept:
        return {**resolve_run(config, name), "sweep_of": name, "swept": {}}
    entry = copy.deepcopy(config["runs"][name])
    entry.pop("sweep")
    for key, value in swept.items():
        if key in SWEEP_SETTINGS:
            entry[key] = value
        else:
            entry.setdefault("args", {})[key] = value
    one = swept_name(name, swept)
    spec = resolve_run({**config, "runs": {**config["runs"], one: entry}}, one)
    return {**spec, "sweep_of": name, "swept": dict(swept)}


def resolve_runs(config: dict) -> dict[str, dict]:
    """Every run of the study. A run with a sweep (`runs.<name>.sweep: {key: [values]}`: TRL arguments or the
    settings in SWEEP_SETTINGS) becomes one run per combination, named by `swept_name` (grpo-lr5e-05-steps40), with
    `sweep_of` (the configured name) and `swept` ({key: value}, what tables carry as columns). A run with several
    seeds (`runs.<name>.seeds`, else the top-level `train_seeds`) becomes one run per seed (of each combination),
    named <name>-seed<seed>, with TRL's `seed` set; each keeps `group` (the name before the seed: the configured or
    swept name) so that tables can aggregate over seeds. A run with one seed or none keeps its name."""
    runs = {}

    def add(one: dict, what: str) -> None:
        if one["name"] in config["runs"] or one["name"] in runs:
            raise ConfigError(f"runs.{one['name']}: the name of {what} is already a run; rename one of them")
        runs[one["name"]] = one

    for name in config["runs"]:
        for swept in sweep_combinations(config, name):
            spec = _resolve_swept(config, name, swept)
            if is_imported(spec):
                runs[name] = {**spec, "group": name}
                continue
            label = spec["name"]
            what = f"sweep {swept} of run {name}" if swept else f"run {name}"
            seeds = spec.pop("seeds", None) or config.get("train_seeds") or []
            if isinstance(seeds, int):
                seeds = list(range(seeds))
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"runs.{name}.seeds (or train_seeds) repeats a seed: {seeds}")
            if len(seeds) == 1:
                spec["args"]["seed"] = spec["seed"] = seeds[0]
            if len(seeds) <= 1:
                if swept:
                    add({**spec, "group": label}, what)
                else:
                    runs[name] = {**spec, "group": name}
                continue
            for seed in seeds:
                one = copy.deepcopy(spec)
                one["args"]["seed"] = one["seed"] = seed
                one.update(name=seeded_name(label, seed), group=label)
                add(one, f"seed {seed} of {what}")
    for name, spec in runs.items():
        ref = spec.setdefault("reference", BASE)
        if ref == name or (ref != BASE and ref not in runs):
            what = "itself" if ref == name else f"no run named {ref!r}"
            raise ConfigError(f"runs.{spec['group']}.reference: {what}; give {BASE} (the default: the base model) or "
                              f"another run, whose final checkpoint is then the reference (runs: {', '.join(runs)})")
    return runs


def check_launch(config: dict) -> None:
    """Training on several nodes needs DeepSpeed (one accelerate launcher per node)."""
    launch = config.get("launch", {})
    nodes = launch.get("nodes", 1)
    if nodes > 1 and not launch.get("deepspeed", {}).get("enabled", False):
        raise ConfigError(f"launch.nodes is {nodes}: training on several nodes needs launch.deepspeed.enabled: true")
    vllm = launch.get("vllm", {})
    if nodes > 1 and vllm.get("enabled") and vllm.get("mode") == "server":
        raise ConfigError(f"launch.nodes is {nodes}: launch.vllm.mode server serves from one node's GPU; use "
                          "colocate on several nodes")


def eval_suites(config: dict, final: bool) -> list[str]:
    """Suites evaluated on a checkpoint: all on the base and final checkpoints, final_only ones skipped elsewhere."""
    ev = config["eval"]
    for key in ("final_only", "in_domain"):
        unknown = set(ev.get(key) or []) - set(ev["tasks"])
        if unknown:
            raise ConfigError(f"eval.{key} names unknown suites: {sorted(unknown)} (suites: {sorted(ev['tasks'])})")
    tasks = {task for suite in ev["tasks"].values() for task in suite}
    for key in ("num_fewshot", "primary_metrics", "fewshot_as_multiturn", "item_clusters"):
        stray = sorted(set(ev.get(key, {})) - tasks)
        if stray:
            raise ConfigError(f"eval.{key} names tasks that eval.tasks does not run: {stray}")
    for when, counts in (ev.get("samples") or {}).items():
        stray = sorted(set(counts) - tasks)
        if stray:
            raise ConfigError(f"eval.samples.{when} names tasks that eval.tasks does not run: {stray}")
    if ev.get("base_chat_template") == "own" and config["model"]["base"] == "build":
        raise ConfigError("eval.base_chat_template: own needs a published base model; the built one (model.base: "
                          "build) has only the study template")
    return [s for s in ev["tasks"] if final or s not in ev.get("final_only", [])]


def eval_samples(config: dict, final: bool) -> dict[str, int]:
    """Samples per problem of each task that has more than one, on a final (or the base) or an intermediate
    checkpoint (config eval.samples)."""
    counts = (config["eval"].get("samples") or {}).get("final" if final else "intermediate") or {}
    return {task: k for task, k in counts.items() if k > 1}


def task_domains(config: dict) -> dict[str, list[str]]:
    """The tasks in domain (suites of `eval.in_domain`) and out of domain (every other suite), in config order."""
    ev = config["eval"]
    in_suites = set(ev["in_domain"] if ev.get("in_domain") is not None else ["math"])
    return {"in_domain": [t for s, ts in ev["tasks"].items() if s in in_suites for t in ts],
            "out_of_domain": [t for s, ts in ev["tasks"].items() if s not in in_suites for t in ts]}


def reference_label(runs: dict, run: str) -> str:
    """A run's reference as the tables name it: `base`, or `<run>@<step>`, another run's final checkpoint."""
    ref = runs[run].get("reference", BASE)
    return ref if ref == BASE else f"{ref}@{max(runs[ref]['checkpoint_steps'])}"


def mismatch_args(config: dict) -> str | list[str]:
    """The weight rules' --dtype-mismatch value, with --tensor-mismatch shared after it when config
    diff.tensor_mismatch says so. The default stays the one string it always was: Snakemake reruns a job whose
    recorded params change, and a study where every tensor matches has nothing to recompute."""
    diff = config["diff"]
    if diff["tensor_mismatch"] == "refuse":
        return diff["dtype_mismatch"]
    return [diff["dtype_mismatch"], "--tensor-mismatch", diff["tensor_mismatch"]]


def weight_pairs(config: dict, runs: dict[str, dict]) -> list[tuple[str, str]]:
    """The pairs of runs whose final checkpoints' updates are compared: every GRPO x SFT pair, then
    `weights.pairs`, each once (in either order)."""
    pairs = [(a, b) for a in runs if runs[a]["method"] == "grpo" for b in runs if runs[b]["method"] == "sft"]
    for i, pair in enumerate(config.get("weights", {}).get("pairs", [])):
        for run in pair:
            if run not in runs:
                raise ConfigError(f"weights.pairs[{i}]: {run!r} is not a run (runs: {', '.join(runs)})")
        if pair[0] == pair[1]:
            raise ConfigError(f"weights.pairs[{i}]: a run compared with itself ({pair[0]!r})")
        if tuple(pair) not in pairs and tuple(reversed(pair)) not in pairs:
            pairs.append(tuple(pair))
    return pairs

def settings_table(config: dict, runs: dict[str, dict]) -> str:
    """The settings a GPU run depends on, one line per run, for the dry run to show before anything is submitted."""
    launch = config.get("launch", {})
    ds, vllm = launch.get("deepspeed", {}), launch.get("vllm", {})
    model = config.get("model", {})
    vllm_setting = f"{vllm.get('mode')} at {vllm.get('gpu_memory_utilization')}" if vllm.get("enabled") else "off"
    lines = [f"model {model.get('base')} dtype {model.get('dtype')} attention {model.get('attn_implementation')}; "
             f"DeepSpeed {'ZeRO-' + str(ds.get('zero_stage')) if ds.get('enabled') else 'off'}; "
             f"vLLM {vllm_setting}; "
             f"base evaluated with the {config.get('eval', {}).get('base_chat_template', 'study')} chat template"]
    header = ("run", "method", "steps", "ckpts", "lr", "batch/step", "max/device", "bf16", "grad ckpt", "frozen")
    rows = [header]
    for name, spec in runs.items():
        args = spec["args"]
        frozen = "train_only" if spec.get("train_only") else "freeze" if spec.get("freeze") else "-"
        rows.append((name, spec["method"], str(spec["steps"]), str(len(spec["checkpoint_steps"])),
                     f"{args.get('learning_rate', '-'):g}" if "learning_rate" in args else "-",
                     str(spec.get("global_batch_size", "-")), str(args.get("per_device_train_batch_size", "-")),
                     str(args.get("bf16", "-" if is_imported(spec) else False)),
                     str(args.get("gradient_checkpointing", "-")), frozen))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)

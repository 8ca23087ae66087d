import json
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Rules run this checkout's own package, whatever is installed in their environment.
PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_DIR, os.environ.get("PYTHONPATH")])))

from scalpel import config as study_config  # noqa: E402
from scalpel import hub as study_hub  # noqa: E402
from scalpel import prefetch as study_prefetch  # noqa: E402
from scalpel.train import launch as study_launch  # noqa: E402
from scalpel import preflight as study_preflight  # noqa: E402
from scalpel.chat import OWN_TEMPLATE  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")
try:
    RUNS = study_config.resolve_runs(config)
    study_config.eval_suites(config, final=True)
    study_config.check_launch(config)
    study_hub.check_config(config)
    WEIGHT_PAIRS = study_config.weight_pairs(config, RUNS)
    SHARED_EVALS = study_config.shared_evaluations(config, RUNS)
except study_config.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None
BASE = study_config.BASE
if BASE in RUNS:
    raise WorkflowError(f"invalid config: runs.{BASE}: the name '{BASE}' is reserved for the base model")
if workflow.is_main_process:  # not in each job's own parse of the workflow
    try:
        for note in study_preflight.check(config, RUNS):
            print(note, file=sys.stderr)
    except study_config.ConfigError as err:
        raise WorkflowError(f"invalid config:\n{err}") from None
    print(f"Study settings:\n{study_config.settings_table(config, RUNS)}", file=sys.stderr)

BUILD_BASE = config["model"]["base"] == "build"
MISMATCH_ARGS = study_config.mismatch_args(config)  # the weight rules' --dtype-mismatch (and --tensor-mismatch)
HUB_IMPORTS = any("repos" in spec for spec in RUNS.values())  # imported runs whose checkpoints are on the hub
SYNTHETIC_DATA = config["data"]["source"] == "synthetic"

# The miniature's data rule writes its own lm-eval tasks; evaluate and prefetch always also search the paper tasks
# shipped with the package (scalpel/tasks/lm_eval_tasks) and lm-eval's built-ins.
LOCAL_TASK_DIR = "results/data/lm_eval_tasks" if SYNTHETIC_DATA else None

# Jobs inherit these (Slurm jobs through sbatch --export=ALL): the HF cache, hub access off but for prefetch, and how
# long torch's elastic agent waits for training to stop (an environment variable, so changing it reruns nothing).
os.environ.update(study_hub.job_environment(config["hub"]))
os.environ.update(TORCH_ELASTIC_SHUTDOWN_TIMEOUT=str(config["launch"]["stop_grace_s"]))


wildcard_constraints:
    run="|".join([BASE, *RUNS]),
    step=r"\d+",


def runs_of(method):
    return [name for name, spec in RUNS.items() if spec["method"] == method]


def method_constraint(method):
    # A regex that matches no run name keeps a method's rule out of the DAG when no run uses it.
    return "|".join(runs_of(method)) or "(?!)"


def base_model_dir():
    return "results/models/base"


def get_prefetch_files(wildcards=None):
    """The prefetch manifests a study needs: one per part (model, data, eval, the imported runs' hub checkpoints), so
    that fetching one part again reruns only its consumers. The miniature (built model, synthetic data and tasks)
    needs none."""
    needed = {
        "model": not BUILD_BASE,
        "data": not SYNTHETIC_DATA,
        "eval": not SYNTHETIC_DATA,
        "checkpoints": HUB_IMPORTS,
    }
    return [f"results/prefetch/{part}.json" for part, need in needed.items() if need]


def get_eval_prefetch(wildcards=None):
    """An input of evaluate: lm-eval's built-in tasks read their datasets from the HF cache."""
    return [] if SYNTHETIC_DATA else "results/prefetch/eval.json"


def get_prefetch_input(wildcards):
    return LOCAL_TASK_DIR if wildcards.part == "eval" and LOCAL_TASK_DIR else []


def get_prefetch_args(wildcards):
    return study_prefetch.command_args(config, wildcards.part, LOCAL_TASK_DIR)


def get_import_manifest(wildcards):
    """An input of import_checkpoints: the commits prefetch resolved, for a run whose checkpoints are on the hub."""
    return "results/prefetch/checkpoints.json" if "repos" in RUNS[wildcards.run] else []


def get_import_folders(wildcards):
    """An input of import_checkpoints: the folders of a local source (a missing one fails the plan)."""
    return list(RUNS[wildcards.run].get("folders", {}).values())


def checkpoints_of(run):
    """(run, step) of every checkpoint of one run."""
    return [(run, step) for step in RUNS[run]["checkpoint_steps"]]


def all_models():
    """(run, step) of every model evaluated: the base once, then every checkpoint of every run."""
    return [(BASE, 0)] + [pair for run in RUNS for pair in checkpoints_of(run)]


def is_final(run, step):
    return run == BASE or int(step) == RUNS[run]["checkpoint_steps"][-1]


def get_model_dir(wildcards):
    if wildcards.run == BASE:
        return base_model_dir()
    return f"results/runs/{wildcards.run}/checkpoints"


def get_checkpoint_path(wildcards):
    if wildcards.run == BASE:
        return base_model_dir()
    return f"results/runs/{wildcards.run}/checkpoints/step-{wildcards.step}"


def reference_dir(run):
    """What a run's checkpoints are compared with (config runs.<name>.reference): the base model, or another run's
    final checkpoint, linked into results/references/<run> (rule reference_model)."""
    ref = RUNS[run]["reference"]
    return base_model_dir() if ref == BASE else f"results/references/{ref}"


def get_reference_dir(wildcards):
    return reference_dir(wildcards.run)


def get_align_references(wildcards):
    """The references of an aligned pair: run a's, then run b's where it is another (each update from its own)."""
    return list(dict.fromkeys([reference_dir(wildcards.run_a), reference_dir(wildcards.run_b)]))


def get_reference_pairs(wildcards=None):
    """Every checkpoint with its reference, for rule reference_check."""
    return json.dumps(
        [
            {
                "run": run,
                "step": step,
                "reference": study_config.reference_label(RUNS, run),
                "reference_dir": reference_dir(run),
                "checkpoint_dir": f"results/runs/{run}/checkpoints/step-{step}",
            }
            for run in RUNS
            for _, step in checkpoints_of(run)
        ]
    )


def get_eval_tasks(wildcards):
    suites = study_config.eval_suites(config, final=is_final(wildcards.run, wildcards.step))
    return ",".join(task for suite in suites for task in config["eval"]["tasks"][suite])


def get_eval_samples(wildcards):
    return json.dumps(study_config.eval_samples(config, final=is_final(wildcards.run, wildcards.step)))


def get_eval_chat_template(wildcards):
    """The base model's own template when eval.base_chat_template is own (the authors' choice); the study's for an
    imported run with chat_template: study; else the checkpoint tokenizer's."""
    if wildcards.run == BASE and config["eval"]["base_chat_template"] == "own":
        return ["--chat-template", f"{base_model_dir()}/{OWN_TEMPLATE}"]
    if wildcards.run != BASE and RUNS[wildcards.run].get("chat_template") == "study":
        return ["--chat-template", "study"]
    return []


def get_eval_files(wildcards=None, evaluated_only=False):
    """Every model's evaluation table; evaluated_only: without those shared from another run (SHARED_EVALS)."""
    return [
        f"results/eval/{run}/step-{step}.tsv"
        for run, step in all_models()
        if not (evaluated_only and (run, step) in SHARED_EVALS)
    ]


def shared_evaluation_pattern():
    """The run/step-N of every evaluation shared from another run, as one wildcard's regex (rule shared_evaluation)."""
    return "|".join(re.escape(f"{run}/step-{step}") for run, step in SHARED_EVALS)


def shared_run_step(wildcards):
    """(run, step) of a shared evaluation's `run/step-N` wildcard."""
    run, name = os.path.split(wildcards.shared)
    return run, int(name.removeprefix("step-"))


def get_shared_run_step(wildcards):
    run, step = shared_run_step(wildcards)
    return ["--run", run, "--step", str(step)]


def get_shared_evaluation(wildcards):
    owner, owner_step = SHARED_EVALS[shared_run_step(wildcards)]
    return {
        "table": f"results/eval/{owner}/step-{owner_step}.tsv",
        "item_scores": f"results/eval/{owner}/step-{owner_step}.items.tsv",
    }


def get_item_files(wildcards=None):
    return [f"results/eval/{run}/step-{step}.items.tsv" for run, step in all_models()]


def get_diff_files(wildcards=None):
    return [f"results/diff/{run}/step-{step}.parquet" for run in RUNS for _, step in checkpoints_of(run)]


DEEPSPEED = config["launch"]["deepspeed"]
LAUNCH_FILES = "results/launch/accelerate.yaml" if DEEPSPEED["enabled"] else []
TRAIN_RESOURCES = study_launch.train_job_resources(config["launch"])


def train_setting(function, wildcards, resources, **kwargs):
    """A launch.py function of the run's job; its refusal as a workflow error naming the run."""
    try:
        return function(config["launch"], RUNS[wildcards.run]["method"], resources, **kwargs)
    except ValueError as err:
        raise WorkflowError(f"{err} (run {wildcards.run})") from None


def get_train_launcher(wildcards, resources):
    return train_setting(
        study_launch.train_launcher,
        wildcards,
        resources,
        config_file=LAUNCH_FILES or None,
        base_model=base_model_dir(),
        dtype=config["model"]["dtype"],
        server_log=f"logs/train/{wildcards.run}.vllm_server.log",
    )


def get_train_omp_threads(wildcards, threads, resources):
    return max(1, threads // train_setting(study_launch.train_processes, wildcards, resources))


def get_kl_files(wildcards=None):
    return [f"results/kl/{run}/step-{step}.json" for run in RUNS for _, step in checkpoints_of(run)]


def get_weight_update_files(wildcards=None):
    return [f"results/weights/update/{run}/step-{step}.parquet" for run in RUNS for _, step in checkpoints_of(run)]


def spectral_steps(run):
    """The checkpoints of a run that get the spectral metrics (config weights.spectral)."""
    steps = RUNS[run]["checkpoint_steps"]
    return {"final": steps[-1:], "all": steps, "none": []}[config["weights"]["spectral"]]


def get_weight_spectral_files(wildcards=None):
    return [f"results/weights/spectral/{run}.parquet" for run in RUNS if spectral_steps(run)]


def get_spectral_checkpoints(wildcards):
    return [f"{step}=results/runs/{wildcards.run}/checkpoints/step-{step}" for step in spectral_steps(wildcards.run)]


def get_weight_align_files(wildcards=None):
    return [f"results/weights/align/{a}_vs_{b}.parquet" for a, b in WEIGHT_PAIRS]


def get_kl_reference():
    return config["kl"]["reference"] or "results/data/kl_reference.jsonl"


def analysis_spec():
    keys = ("method", "checkpoint_steps", "group", "seed", "sweep_of", "swept", "reference")
    runs = {name: {key: spec[key] for key in keys} for name, spec in RUNS.items()}
    return {
        "runs": runs,
        "primary": config["eval"]["primary_metrics"],
        **study_config.task_domains(config),
        "authors": config["report"]["authors"],
    }


AUTHORS_NUMBERS = str(Path(workflow.basedir) / "workflow/report/authors.yaml")

# The miniature's pre-registered claims (docs/miniature-claims.md) are tested when its runs are all there, repeated
# over seeds or not (a seeded run keeps its configured name as group).
MINIATURE_CLAIMS = (
    SYNTHETIC_DATA
    and BUILD_BASE
    and {"grpo", "sft", "sft_matched_lr"} <= {spec.get("group", name) for name, spec in RUNS.items()}
)


# The sweeps' figure exists only where some run is swept (runs.<name>.sweep).
SWEEP_FIGURE = (
    {"sweeps": report("results/figures/sweeps.png", caption="../report/sweeps.rst", category="Sweeps")}
    if any(spec["swept"] for spec in RUNS.values())
    else {}
)
# The throughput table projects the GPU-hours of the first config file: config/paper.yaml under the smoke overlay
# (config/paper-smoke.yaml), a study's own config otherwise; GPUs per job as profiles/slurm asks them.
FULL_CONFIG = str((workflow.overwrite_configfiles or [Path(workflow.basedir) / "config/config.yaml"])[0])
SLURM_PROFILE = str(Path(workflow.basedir) / "profiles/slurm/config.yaml")
TRAINED_RUNS = [run for run in RUNS if not study_config.is_imported(RUNS[run])]


def get_final_outputs():
    return (
        [
            "results/tables/summary.tsv",
            "results/figures/update_heatmaps.png",
            "results/figures/update_trajectories.png",
            "results/figures/scores_final.png",
            "results/figures/scores_by_step.png",
            "results/figures/kl_trajectories.png",
            "results/figures/differences_final.png",
            "results/figures/weights_heatmaps.png",
            "results/figures/weights_trajectories.png",
            "results/figures/weights_alignment.png",
            "results/figures/forgetting.png",
            "results/report/findings.html",
            "results/tables/references.tsv",
        ]
        + (["results/tables/claims.tsv"] if MINIATURE_CLAIMS else [])
        + (["results/tables/throughput.tsv"] if TRAINED_RUNS else [])
        + list(SWEEP_FIGURE.values())
    )

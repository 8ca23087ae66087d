"""Fetch everything the study reads from the hub into the HF cache, on a machine with network, so that every other
job can run offline: the base model, the OpenR1 dataset (one config and split), MATH-500, each eval task's dataset
(through lm-eval's own loader) and NLTK's punkt_tab for IFEval. Local paths given instead of hub ids are read the
same way, which is how this is tested. Writes a manifest: what was fetched, the commits, the row counts.

Tokens come only from the environment (HF_TOKEN or a stored `hf auth login`); none is ever printed.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from scalpel import config as study_config
from scalpel import hub
from scalpel.io import write_json

log = logging.getLogger(__name__)


def fetch_model(source: str, revision: str | None) -> dict:
    folder = hub.model_snapshot(source, revision)
    hub.weight_files(folder, source)
    files = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
    return {"source": source, "revision": revision, "commit": hub.commit_of(folder), "path": str(folder),
            "files": files}


def fetch_checkpoints(imports: dict) -> dict:
    """Each imported run's hub checkpoints, one revision of one repository after the other: every revision (branch,
    tag or commit) resolved to the commit it points to now, which the jobs then read offline. A revision that several
    runs import is fetched and resolved once, so they read one commit (and share its evaluation)."""
    out, fetched = {}, {}
    for run, spec in imports.items():
        steps = {}
        for step, revision in spec["revisions"].items():
            repo = spec["repos"][step]
            if (repo, revision) not in fetched:
                folder = hub.checkpoint_snapshot(repo, revision)
                fetched[repo, revision] = folder, hub.commit_of(folder)
            folder, commit = fetched[repo, revision]
            steps[str(step)] = {"repo": repo, "revision": revision, "commit": commit, "path": str(folder)}
            log.info("run %s step %s: %s at %s is commit %s", run, step, repo, revision, commit)
        out[run] = {"steps": steps}
    return out


def fetch_dataset(source: str, config: str | None, split: str, revision: str | None, columns) -> dict:
    from scalpel.data import openr1

    folder = hub.dataset_snapshot(source, config, split, revision)
    dataset = openr1.load_source(str(folder), config, split)
    openr1.require_columns(dataset, columns, f"{source} ({config}/{split})")
    return {"source": source, "config": config, "split": split, "revision": revision, "commit": hub.commit_of(folder),
            "path": str(folder), "rows": len(dataset), "columns": dataset.column_names}


def explain_task_error(name: str, error: Exception) -> Exception:
    """An error naming the eval task; for a gated dataset (GPQA), what to do about it."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import GatedRepoError

    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, GatedRepoError) or "gated" in str(e).lower() for e in chain):
        token = "no token was found (export HF_TOKEN)" if get_token() is None else \
            "the token in the environment (HF_TOKEN) has no access yet"
        return RuntimeError(f"eval task {name}: its dataset is gated on the hub and {token}; accept the dataset's "
                            f"terms on huggingface.co with that account, then rerun prefetch ({error})")
    return RuntimeError(f"eval task {name}: {type(error).__name__}: {error}")


def fetch_tasks(names: list[str], include_path: str | None) -> dict:
    """Instantiate each lm-eval task, which downloads its dataset into the HF datasets cache (where lm-eval finds it
    again offline); returns name -> dataset and split sizes for every task, groups expanded. The paper tasks shipped
    with the package are found as evaluate finds them."""
    from lm_eval.tasks import TaskManager

    from scalpel.eval.evaluate import task_paths

    paths = task_paths(include_path)
    manager = TaskManager(include_path=paths)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"eval.tasks: lm-eval knows no task {', '.join(unknown)} (also searched {', '.join(paths)})")
    out = {}
    for name in names:
        try:
            leaves = manager.load([name])["tasks"]
        except Exception as err:  # noqa: BLE001 - any loader failure, reported with the task's name
            raise explain_task_error(name, err) from err
        for leaf, task in leaves.items():
            out[leaf] = {"dataset_path": task.config.dataset_path, "dataset_name": task.config.dataset_name,
                         "rows": {split: len(rows) for split, rows in task.dataset.items()}}
    return out


def fetch_punkt(nltk_dir: str) -> str:
    """NLTK's punkt_tab, which IFEval downloads at import when missing (a job offline would fail there)."""
    import nltk

    if not nltk_dir:
        raise ValueError("IFEval needs NLTK's punkt_tab: give --nltk-data or set NLTK_DATA")
    Path(nltk_dir).mkdir(parents=True, exist_ok=True)
    try:
        return str(nltk.data.find("tokenizers/punkt_tab", paths=[nltk_dir]))
    except LookupError:
        if not nltk.download("punkt_tab", download_dir=nltk_dir, quiet=True, raise_on_error=True):
            raise RuntimeError(f"nltk could not download punkt_tab into {nltk_dir}") from None
        return str(nltk.data.find("tokenizers/punkt_tab", paths=[nltk_dir]))


def prefetch(args) -> dict:
    from huggingface_hub import constants

    from scalpel.data import openr1

    manifest = {"hf_home": constants.HF_HOME}
    if args.checkpoints:
        manifest["checkpoints"] = fetch_checkpoints(json.loads(args.checkpoints))
    if args.model:
        manifest["model"] = fetch_model(args.model, args.model_revision)
        log.info("model %s: %s", args.model, manifest["model"]["path"])
    datasets = {}
    if args.dataset:
        datasets["openr1"] = fetch_dataset(args.dataset, args.dataset_config, args.dataset_split,
                                           args.dataset_revision, openr1.REQUIRED)
    if args.math500:
        datasets["math500"] = fetch_dataset(args.math500, "default", "test", None, openr1.MATH500_REQUIRED)
    if datasets:
        manifest["datasets"] = datasets
    tasks = [t for t in (args.tasks or "").split(",") if t]
    if tasks:
        if args.nltk_data:  # where IFEval's own download at import goes too (NLTK's first existing data path)
            Path(args.nltk_data).mkdir(parents=True, exist_ok=True)
        manifest["eval_tasks"] = fetch_tasks(tasks, args.include_path)
        if any("ifeval" in name for name in manifest["eval_tasks"]):
            manifest["nltk_punkt_tab"] = fetch_punkt(args.nltk_data)
    return manifest


PARTS = ("model", "data", "eval", "checkpoints")


def command_args(config: dict, part: str, include_path: str | None = None) -> list[str]:
    """The arguments of `python -m scalpel prefetch` for one part of a study's config (the rule quotes them): the base
    model, the data (OpenR1 and MATH-500), the eval tasks' datasets or the imported runs' hub checkpoints."""
    model, data = config["model"], config["data"]
    args = []
    if part == "model" and model["base"] != "build":
        args += ["--model", model["base"]] + (["--model-revision", model["revision"]] if model["revision"] else [])
    if part == "data" and data["source"] == "openr1":
        o = data["openr1"]
        args += ["--dataset", o["dataset"], "--dataset-config", o["config"], "--dataset-split", o["split"]]
        args += (["--dataset-revision", o["revision"]] if o["revision"] else [])
        args += (["--math500", o["math500"]] if o["math500"] else [])
    if part == "checkpoints":
        imports = {name: {"repos": spec["repos"], "revisions": spec["revisions"]}
                   for name, spec in study_config.resolve_runs(config).items() if "repos" in spec}
        args += ["--checkpoints", json.dumps(imports)] if imports else []
    tasks = list(dict.fromkeys(t for suite in config["eval"]["tasks"].values() for t in suite))
    if part == "eval" and tasks:
        args += ["--tasks", ",".join(tasks)] + (["--include-path", include_path] if include_path else [])
    if part not in PARTS:
        raise ValueError(f"prefetch part {part!r}: expected one of {', '.join(PARTS)}")
    return args


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("prefetch", help="download the model, datasets and eval data into the HF cache "
                                                "(needs network)", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="hub id or local folder of the base model")
    ap.add_argument("--model-revision", default=None)
    ap.add_argument("--dataset", default=None, help="hub id or local copy of OpenR1-Math-220k")
    ap.add_argument("--dataset-config", default="extended")
    ap.add_argument("--dataset-split", default="train")
    ap.add_argument("--dataset-revision", default=None)
    ap.add_argument("--math500", default=None, help="hub id or local copy of MATH-500 (the KL reference set)")
    ap.add_argument("--checkpoints", default=None,
                    help='imported runs\' hub checkpoints, JSON: '
                         '{"run": {"repos": {step: repo}, "revisions": {step: revision}}}')
    ap.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    ap.add_argument("--include-path", default=None, help="folder of local lm-eval task YAMLs")
    ap.add_argument("--nltk-data", default=(os.environ.get("NLTK_DATA") or "").split(os.pathsep)[0] or None,
                    help="where IFEval's punkt_tab goes (default: the first NLTK_DATA entry)")
    ap.add_argument("--out", required=True, help="manifest JSON to write")
    ap.set_defaults(func=main)


def main(args) -> None:
    log.info(hub.describe_environment())
    manifest = prefetch(args)
    write_json(manifest, args.out)
    log.info("manifest %s:\n%s", args.out, json.dumps(manifest, indent=1))

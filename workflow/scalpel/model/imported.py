"""The checkpoints of an imported run (method import): checkpoints that already exist, in a hub repository (one
revision per checkpoint, resolved to a commit by prefetch and read from the HF cache by that commit, offline) or in a
local folder, linked into results/runs/<run>/checkpoints/step-<N>/ as trained checkpoints are published there, so
that every later rule reads them the same way. Only the model files are linked (hub.MODEL_FILE_PATTERNS): never
pickled weights nor code; a checkpoint without *.safetensors weights is an error naming it. Beside them, SOURCE
says where the checkpoint came from (repo, revision and commit, or folder), so that evaluation can name the commit
of its weights and tokenizer to lm-eval (`source`).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
from pathlib import Path

from scalpel import hub
from scalpel.io import check_safetensors, read_yaml, write_json

log = logging.getLogger(__name__)
SAFETENSORS_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # header names, lower-cased
SOURCE = "scalpel_source.json"


def source(folder) -> dict | None:
    """Where an imported checkpoint came from ({repo, revision, commit} or {folder}); None for a trained one."""
    path = Path(folder) / SOURCE
    return json.loads(path.read_text()) if path.is_file() else None


def model_files(folder: Path, where: str) -> list[Path]:
    """The files of a checkpoint folder that are linked: safetensors weights, configs, tokenizer, chat template."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: no folder {folder}")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name != SOURCE
                   and any(fnmatch.fnmatch(f.name, p) for p in hub.MODEL_FILE_PATTERNS))
    if not any(f.name.endswith(".safetensors") for f in files):
        pickled = sorted(f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".pkl"))
        hint = f" (only pickled weights, never read: {', '.join(pickled)})" if pickled else ""
        raise FileNotFoundError(f"{where}: no *.safetensors weights in {folder}{hint}")
    return files


def stored_dtypes(folder: Path) -> list[str]:
    """The dtypes a checkpoint's weights are stored in, read from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    dtypes = set()
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, framework="pt") as weights:
            dtypes |= {weights.get_slice(name).get_dtype() for name in weights.keys()}
    return sorted(dtypes)


def checkpoint_sources(spec: dict, manifest: dict | None) -> dict[int, tuple[Path, dict]]:
    """step -> (the folder of that checkpoint, where it came from) for one imported run's spec. A hub checkpoint is
    read by the commit prefetch recorded for its revision, so a branch moved since changes nothing."""
    name = spec["name"]
    out = {}
    if "folders" in spec:
        for step, folder in spec["folders"].items():
            out[int(step)] = (Path(folder), {"folder": os.path.abspath(folder)})
        return out
    fetched = (manifest or {}).get("checkpoints", {}).get(name, {}).get("steps", {})
    for step, revision in spec["revisions"].items():
        repo = spec["repos"][step]
        entry = fetched.get(str(step))
        if entry is None or (entry["repo"], entry["revision"]) != (repo, revision):
            raise FileNotFoundError(f"run {name}: {repo} at revision {revision} (step {step}) is not in the prefetch "
                                    "manifest (rerun the prefetch rule)")
        folder = hub.checkpoint_snapshot(repo, entry["commit"], cached_only=True)
        out[int(step)] = (folder, {"repo": repo, "revision": revision, "commit": entry["commit"]})
    return out


def link_checkpoints(spec: dict, manifest: dict | None, out_dir: Path, dtype: str | None = None) -> dict:
    """Link each checkpoint's model files into out_dir/step-<N>/ (symlinks to absolute paths: nothing is copied);
    returns the provenance of each step, with the dtypes its weights are stored in, and says so when they are not
    `dtype` (the study's model.dtype). Every checkpoint is checked before anything is written."""
    sources = checkpoint_sources(spec, manifest)
    if sorted(sources) != sorted(spec["checkpoint_steps"]):
        raise ValueError(f"run {spec['name']}: sources for steps {sorted(sources)}, not {spec['checkpoint_steps']}")
    files = {step: model_files(folder, f"run {spec['name']} step {step}") for step, (folder, _) in sources.items()}
    provenance = {}
    for step, (folder, origin) in sorted(sources.items()):
        step_dir = Path(out_dir) / f"step-{step}"  # Snakemake removes the folder of a failed job
        step_dir.mkdir(parents=True)
        for f in files[step]:
            (step_dir / f.name).symlink_to(os.path.abspath(f))
        check_safetensors(step_dir)
        write_json(origin, step_dir / SOURCE)
        dtypes = stored_dtypes(step_dir)
        provenance[str(step)] = {**origin, "files": [f.name for f in files[step]], "dtypes": dtypes}
        log.info("run %s step %d: %s, stored in %s", spec["name"], step, origin, ", ".join(dtypes))
        if dtype and any(d.lower() != SAFETENSORS_DTYPES.get(dtype, dtype) for d in dtypes):
            log.warning("run %s step %d is stored in %s, not the study's %s: evaluation and KL load it in %s (model."
                        "dtype), and diff compares it with the reference cast to its own dtype (diff.dtype_mismatch)",
                        spec["name"], step, ", ".join(dtypes), dtype, dtype)
    return provenance


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("import-checkpoints", help="link an imported run's existing checkpoints into the study",
                               description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="the run's spec.yaml (method import)")
    ap.add_argument("--manifest", default=None, help="prefetch manifest with the commits of a hub source")
    ap.add_argument("--out", required=True, help="results/runs/<run>/checkpoints")
    ap.add_argument("--dtype", default=None, help="the study's model.dtype: a checkpoint stored otherwise is said")
    ap.add_argument("--provenance", required=True, help="JSON to write: each step's source, revision and commit")
    ap.set_defaults(func=main)


def main(args) -> None:
    log.info(hub.describe_environment())
    spec = read_yaml(args.spec)
    manifest = json.loads(Path(args.manifest).read_text()) if args.manifest else None
    provenance = link_checkpoints(spec, manifest, Path(args.out), args.dtype)
    write_json({"run": spec["name"], "steps": provenance}, args.provenance)

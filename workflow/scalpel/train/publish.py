"""The end of a training run: its state folder marked finished, then published into the declared outputs.

Training (`train.run`, under the launcher) writes only into its state folder, never under a declared output:
`exports/step-<N>` (the HF folders of the checkpoint steps), `completions/` (GRPO's logged completions),
`trainer_log.json` and, last, once every rank has finished, `finished` (the spec's hash). `python -m scalpel publish`
runs after the launcher has exited 0 (the training rules: `<launcher> train ... && python -m scalpel publish ...`).
It links (or copies) those files into the declared outputs and deletes the state only once all of them are in
place. A job that fails anywhere before leaves its state whole: Snakemake deletes a failed job's declared outputs,
which are never the only copy of a finished checkpoint, and the rerun publishes without training again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import yaml

from scalpel import faults
from scalpel.io import atomic_output

log = logging.getLogger(__name__)
FINISHED = "finished"
HISTORY = "trainer_log.json"


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def is_finished(state_dir, spec: dict) -> bool:
    marker = Path(state_dir) / FINISHED
    return marker.is_file() and marker.read_text() == spec_hash(spec)


def mark_finished(state_dir, spec: dict, log_history: list) -> None:
    """Record a finished training in `state_dir`: its log history, then the `finished` stamp (main process only,
    once every rank is done)."""
    state_dir = Path(state_dir)
    missing = [s for s in spec["checkpoint_steps"] if not (state_dir / f"exports/step-{s}").is_dir()]
    if missing:
        raise RuntimeError(f"training ended without checkpoints for steps {missing} in {state_dir / 'exports'}")
    with atomic_output(state_dir / HISTORY) as tmp:
        tmp.write_text(json.dumps(log_history, indent=1))
    with atomic_output(state_dir / FINISHED) as tmp:
        tmp.write_text(spec_hash(spec))


def clear_folder(folder: Path) -> None:
    """Delete `folder`, or only its content where it cannot go (a mount point, e.g. a scratch disk as the state)."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def link_tree(src: Path, dest: Path) -> None:
    """`dest` as a copy of folder `src`, in one rename: hard links where the filesystem allows (no space, no time),
    else copies."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in sorted(src.rglob("*")):
        target = tmp / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def publish(spec_file, state_dir, checkpoint_dir, log_file, completions_dir=None) -> None:
    """Put a finished training's checkpoints, completions and log history in their declared places, then drop the
    state."""
    spec = yaml.safe_load(Path(spec_file).read_text())
    state_dir, checkpoint_dir = Path(state_dir), Path(checkpoint_dir)
    if not is_finished(state_dir, spec):
        raise RuntimeError(f"{state_dir}: no finished training of run {spec['name']} to publish (no '{FINISHED}' "
                           "stamp of this spec): train first")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(spec["checkpoint_steps"]):
        link_tree(state_dir / f"exports/step-{step}", checkpoint_dir / f"step-{step}")
        if i == 0:
            faults.reach("publish")
    if completions_dir is not None:
        completions = state_dir / "completions"
        if completions.is_dir():
            link_tree(completions, Path(completions_dir))
        else:
            Path(completions_dir).mkdir(parents=True, exist_ok=True)
    with atomic_output(log_file) as tmp:
        shutil.copyfile(state_dir / HISTORY, tmp)
    log.info("published steps %s of run %s to %s; deleting %s", spec["checkpoint_steps"], spec["name"],
             checkpoint_dir, state_dir)
    clear_folder(state_dir)


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("publish", help="a finished training's checkpoints into the declared outputs, then "
                                               "its state deleted", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="the run's resolved spec.yaml")
    ap.add_argument("--state", required=True, help="the state folder training wrote")
    ap.add_argument("--checkpoints", required=True, help="declared output: one step-<N> folder per checkpoint")
    ap.add_argument("--log-history", required=True, help="declared output: the trainer's log history (JSON)")
    ap.add_argument("--completions", default=None, help="declared output (GRPO): the logged completions")
    ap.set_defaults(func=main)


def main(a) -> None:
    publish(a.spec, a.state, a.checkpoints, a.log_history, a.completions)

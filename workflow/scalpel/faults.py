"""Faults injected at named phases, for the tests that check that a killed or crashed job loses nothing.

`SCALPEL_FAULT=<action>:<phase>` makes the process that reaches `<phase>` do `<action>`; unset, nothing happens.

Actions:
- `kill`: SIGKILL every process of the job at once, as a node loss does: the process tree under the pid in
  `SCALPEL_FAULT_ROOT` (e.g. the Snakemake that runs the job), else this process alone.
- `abort`: this process aborts (SIGABRT), as a C++ `terminate called without an active exception` at exit does.
- `fill`: fill the filesystem of the phase's folder with a file `fault-ballast` there, so that the next write
  fails with ENOSPC (a full disk); deleting the file gives the space back.

Phases (the code calls `reach` with these names):
- `step-<N>`: training, rank 0, at the end of optimizer step N;
- `save-<N>`: training, rank 0, saving checkpoint N: the weights are written, optimizer and trainer state not yet;
- `publish`: the first checkpoint is in the declared output folder, the others not yet;
- `exit-rank-<R>`: training, rank R, after a clean shutdown, just before the process exits;
- `write:<file name>`: an atomic write of that file, its content complete in the temporary file, not yet renamed.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

VARIABLE = "SCALPEL_FAULT"
ROOT_VARIABLE = "SCALPEL_FAULT_ROOT"
BALLAST = "fault-ballast"


def armed(phase: str) -> str | None:
    """The action set for `phase`, if any."""
    action, _, wanted = os.environ.get(VARIABLE, "").partition(":")
    return action if wanted == phase else None


def reach(phase: str, folder=None) -> None:
    """Do the fault set for `phase` (`folder`: where `fill` fills)."""
    action = armed(phase)
    if action == "kill":
        kill_tree(int(os.environ.get(ROOT_VARIABLE, os.getpid())))
    elif action == "abort":
        os.abort()
    elif action == "fill":
        fill(Path(folder))
    elif action is not None:
        raise ValueError(f"{VARIABLE}: unknown action {action!r} (kill, abort, fill)")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def kill_tree(root: int) -> None:
    """SIGKILL `root` and all its descendants together: first stop them all (so that none reacts to another's death,
    as a launcher would), then kill them, this process last."""
    me, stopped = os.getpid(), set()
    while True:  # until no process forks a new one between the listing and the stop
        children, tree, todo = _children(), [], [root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        new = [pid for pid in tree if pid not in stopped and pid != me]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            stopped.add(pid)
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(me, signal.SIGKILL)


def fill(folder: Path) -> None:
    """Write zeros to `folder/fault-ballast` until its filesystem is full."""
    block = bytes(1 << 20)
    with open(folder / BALLAST, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        try:  # the last bytes a partial block left
            while True:
                fh.write(bytes(4096))
        except OSError:
            pass

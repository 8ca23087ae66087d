"""Files written so that a reader (or a killed job) never leaves half of one behind, and weights checked before use."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from . import faults


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one rename.

    A writer killed (SIGKILL) before the rename leaves its temporary file: the next write of `path` removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        faults.reach(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_safetensors(model_dir) -> list[Path]:
    """The safetensors files of an HF model folder, each checked readable (header and size; no tensor is read).

    A truncated or corrupt file raises ValueError naming it, before any result is computed from it.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"{index}: not a safetensors index ({err!r})") from None
        missing = sorted(shards - {f.name for f in files})
        if missing:
            raise FileNotFoundError(f"{index} names {missing[0]}, which {model_dir} lacks")
    for file in files:
        try:
            with safe_open(file, framework="pt") as fh:
                fh.keys()
        except Exception as err:  # safetensors raises its own SafetensorError, without the file's name
            raise ValueError(f"{file}: unreadable safetensors file ({err}): truncated or corrupt; "
                             "recreate it (rerun the job that wrote it)") from None
    return files

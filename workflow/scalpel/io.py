"""The file formats of the workflow (JSON, JSONL, YAML, TSV, parquet), each written atomically so that a reader (or a
killed job) never leaves half of one behind, and weights checked before use."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from scalpel import faults


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


def write_json(obj, path, indent: int = 1) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def read_jsonl(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(rows, path) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_yaml(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


def write_yaml(obj, path) -> None:
    import yaml

    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))


def read_tsv(path, **read_csv_args):
    import pandas as pd

    return pd.read_csv(path, sep="\t", **read_csv_args)


def write_tsv(df, path) -> None:
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def write_parquet(df, path) -> None:
    with atomic_output(path) as tmp:
        df.to_parquet(tmp, index=False)


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

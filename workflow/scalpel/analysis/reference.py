"""How each checkpoint differs from its reference, from safetensors headers and config.json alone (no tensor read),
before any analysis reads both: models from different pipelines need not match.

- A tensor whose shape differs, or that one side lacks, is an error naming it, the run and step and the reference,
  unless `tensor_mismatch` is "shared" (config diff.tensor_mismatch): then the weight analyses read the tensors both
  have, with the same shape, and the table lists each one left out.
- Stored dtypes are reported with the dtype the analyses compare in (the checkpoint's; the reference cast to it by
  diff.dtype_mismatch: cast).
- Config values that differ (max_position_embeddings, rope_theta, ...) are reported: tensors can match where configs
  do not (a longer context, another RoPE base), and the evaluations then differ for that reason.

One row per finding: run, step, reference, kind (dtype, tensor, config), name, checkpoint, reference_value, note;
every checkpoint has its dtype row, so every (run, step) is named with its reference.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from scalpel.analysis.matrices import TENSOR_POLICIES
from scalpel.analysis.tensor_stream import DTYPES, model_tensors

log = logging.getLogger(__name__)
COLUMNS = ["run", "step", "reference", "kind", "name", "checkpoint", "reference_value", "note"]
# Not model settings: the writer's version and path, and the storage dtype (reported from the weights themselves).
CONFIG_IGNORED = {"transformers_version", "_name_or_path", "torch_dtype", "dtype"}


def _torch_name(code: str) -> str:
    return str(DTYPES[code]).removeprefix("torch.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _config(folder: Path) -> dict:
    """config.json as transformers reads it (legacy keys such as a top-level rope_theta moved where this version
    keeps them, so that two writers' spellings of one setting compare equal), nested keys dotted."""
    from transformers import AutoConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = AutoConfig.from_pretrained(folder).to_dict()
    except (ValueError, OSError, KeyError) as err:  # a model type this transformers does not know
        log.warning("%s: compared as written (transformers cannot read it: %s)", path, err)
        config = json.loads(path.read_text())
    return _flat(config)


def mismatched_tensors(reference: dict, checkpoint: dict) -> list[tuple[str, str, str]]:
    """(tensor, its shape in the checkpoint or 'missing', in the reference or 'missing') for every tensor the two
    do not share with one shape, sorted by name."""
    out = []
    for name in sorted(set(reference) | set(checkpoint)):
        shapes = [str(list(side[name].shape)) if name in side else "missing" for side in (checkpoint, reference)]
        if shapes[0] != shapes[1]:
            out.append((name, *shapes))
    return out


def config_differences(reference_dir, checkpoint_dir) -> list[tuple[str, str, str]]:
    """(key, value in the checkpoint, value in the reference) for every config.json key that differs."""
    ref, ckpt = _config(reference_dir), _config(checkpoint_dir)
    keys = sorted((set(ref) | set(ckpt)) - CONFIG_IGNORED)
    dump = json.dumps
    return [(k, dump(ckpt.get(k)), dump(ref.get(k))) for k in keys if ckpt.get(k) != ref.get(k)]


def check(reference_dir, checkpoint_dir, *, run: str, step: int, reference: str,
          tensor_mismatch: str = "refuse") -> list[dict]:
    """The rows of one checkpoint against its reference (module docstring); a tensor mismatch raises ValueError
    naming the tensor, run, step and reference unless `tensor_mismatch` is "shared"."""
    if tensor_mismatch not in TENSOR_POLICIES:
        raise ValueError(f"diff.tensor_mismatch: {tensor_mismatch!r} is not one of {TENSOR_POLICIES}")
    ref_entries, ref_src = model_tensors(reference_dir)
    ckpt_entries, ckpt_src = model_tensors(checkpoint_dir)
    key = {"run": run, "step": step, "reference": reference}
    mismatched = mismatched_tensors(ref_entries, ckpt_entries)
    if mismatched and tensor_mismatch == "refuse":
        name, mine, theirs = mismatched[0]
        raise ValueError(f"{name}: {mine} in run {run} step {step} ({ckpt_src}) but {theirs} in its reference "
                         f"{reference} ({ref_src}); {len(mismatched)} tensor(s) differ. Set diff.tensor_mismatch: "
                         "shared to analyse only the tensors both have")
    rows = []
    ckpt_dtypes = sorted({e.dtype for e in ckpt_entries.values()})
    ref_dtypes = sorted({e.dtype for e in ref_entries.values()})
    if ckpt_dtypes == ref_dtypes:
        note = "same dtype"
    else:
        compared = "/".join(_torch_name(d) for d in ckpt_dtypes)
        note = f"compared in the checkpoint's {compared}: the reference cast to it (diff.dtype_mismatch)"
    rows.append({**key, "kind": "dtype", "name": "weights", "checkpoint": ",".join(ckpt_dtypes),
                 "reference_value": ",".join(ref_dtypes), "note": note})
    for name, mine, theirs in mismatched:
        log.warning("run %s step %d: %s is %s, %s in reference %s: left out", run, step, name, mine, theirs, reference)
        rows.append({**key, "kind": "tensor", "name": name, "checkpoint": mine, "reference_value": theirs,
                     "note": "left out of the weight analyses (diff.tensor_mismatch: shared)"})
    for name, mine, theirs in config_differences(reference_dir, checkpoint_dir):
        rows.append({**key, "kind": "config", "name": name, "checkpoint": mine, "reference_value": theirs,
                     "note": "reported; the weights are compared as stored"})
    return rows


def check_all(pairs: list[dict], tensor_mismatch: str = "refuse") -> pd.DataFrame:
    """`check` over pairs of {run, step, reference, reference_dir, checkpoint_dir}, one table."""
    rows = []
    for p in pairs:
        rows += check(p["reference_dir"], p["checkpoint_dir"], run=p["run"], step=int(p["step"]),
                      reference=p["reference"], tensor_mismatch=tensor_mismatch)
    return pd.DataFrame(rows, columns=COLUMNS)


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("reference-check", help="how each checkpoint differs from its reference",
                               description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True,
                    help="JSON list of {run, step, reference, reference_dir, checkpoint_dir}")
    ap.add_argument("--tensor-mismatch", choices=TENSOR_POLICIES, default="refuse",
                    help="a tensor missing on one side or of another shape: refuse, or analyse the shared ones only")
    ap.add_argument("--out", required=True, help="TSV to write")
    ap.set_defaults(func=main)


def main(args) -> None:
    from scalpel.io import write_tsv

    write_tsv(check_all(json.loads(args.pairs), args.tensor_mismatch), args.out)

"""How far each layer x module weight moved: ||W_ckpt - W_base||_F / ||W_base||_F, streamed tensor by tensor.

The base is compared as training loaded it: in the checkpoint's dtype. A float32 base against a bfloat16 checkpoint
would otherwise count bf16 rounding (~0.2% of a weight's norm) as an update, more than GRPO's whole final update
(the authors loaded both models in bf16: open-r1_olmo@2ea0f68 experiments/norms/ckpt_weight_anlys.py).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open

from scalpel.analysis.matrices import MODULES, layer_module  # noqa: F401 (MODULES: this module's public name since the start)
from scalpel.io import check_safetensors, write_parquet

DEFAULT_CHUNK_ROWS = 1024
DTYPE_POLICIES = ("cast", "refuse")  # config diff.dtype_mismatch
TENSOR_POLICIES = ("refuse", "shared")  # config diff.tensor_mismatch
HINT = " (diff.tensor_mismatch: shared analyses the matrices both have)"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


def _tensor_files(model_dir) -> tuple[dict[str, Path], Path]:
    """Every tensor name -> the file holding it, and the file that says so (the index, or the single file).

    Only headers are read here, never tensor data.
    """
    model_dir = Path(model_dir)
    index = model_dir / _INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}, index
    single = model_dir / _SINGLE
    if single.exists():
        with safe_open(single, framework="pt") as fh:
            return {name: single for name in fh.keys()}, single
    raise FileNotFoundError(f"{model_dir}: neither {_SINGLE} nor {_INDEX}")


def _squared_norms(base, ckpt, rows: int, chunk_rows: int, dtype: torch.dtype) -> tuple[float, float]:
    """(||ckpt - base||^2, ||base||^2), reading `chunk_rows` rows at a time from two safetensors slices, the base
    rounded to `dtype` first.

    Chunks go to float64 (exact for bf16/fp16/fp32) so the difference and the sums lose nothing that matters:
    a float32 sum over a 100M-element tensor drifts in the 5th-6th significant digit.
    """
    delta_sq = base_sq = 0.0
    for start in range(0, rows, chunk_rows):
        b = base[start:start + chunk_rows].to(dtype).to(torch.float64)
        d = ckpt[start:start + chunk_rows].to(torch.float64).sub_(b)
        delta_sq += float(d.square_().sum())
        base_sq += float(b.square_().sum())
    return delta_sq, base_sq


def _compared_dtype(name: str, base, ckpt, base_file: Path, ckpt_file: Path, dtype_mismatch: str) -> torch.dtype:
    """The checkpoint's dtype, in which both tensors are compared; a base of another dtype is cast to it, or refused."""
    base_dtype, ckpt_dtype = base.get_dtype(), ckpt.get_dtype()
    for dtype, file in ((base_dtype, base_file), (ckpt_dtype, ckpt_file)):
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {dtype} in {file} is not a floating-point weight")
    if base_dtype != ckpt_dtype and dtype_mismatch == "refuse":
        raise ValueError(f"{name}: {base_dtype} in base ({base_file}) but {ckpt_dtype} in checkpoint ({ckpt_file}); "
                         f"diff.dtype_mismatch is refuse (cast compares the base rounded to the checkpoint's dtype)")
    return _DTYPES[ckpt_dtype]


def relative_updates(base_dir, ckpt_dir, chunk_rows: int = DEFAULT_CHUNK_ROWS, dtype_mismatch: str = "cast",
                     tensor_mismatch: str = "refuse") -> pd.DataFrame:
    """One row per (layer, module): layer, module, rel_update, delta_norm, base_norm, dtype (the checkpoint's, in
    which both were compared) and reference_dtype (the base's as stored); sorted by layer, MODULES.
    `dtype_mismatch`: cast a base of another dtype to the checkpoint's, or refuse it. `tensor_mismatch`: a matrix
    missing on one side or of another shape is an error (refuse), or left out (shared)."""
    if dtype_mismatch not in DTYPE_POLICIES:
        raise ValueError(f"diff.dtype_mismatch: {dtype_mismatch!r} is not one of {DTYPE_POLICIES}")
    if tensor_mismatch not in TENSOR_POLICIES:
        raise ValueError(f"diff.tensor_mismatch: {tensor_mismatch!r} is not one of {TENSOR_POLICIES}")
    shared = tensor_mismatch == "shared"
    base_files, base_src = _tensor_files(base_dir)
    ckpt_files, ckpt_src = _tensor_files(ckpt_dir)
    wanted = {name: lm for name in base_files if (lm := layer_module(name)) is not None}
    if not wanted:
        raise ValueError(f"{base_src}: no model.layers.*.{{self_attn,mlp}}.*_proj.weight tensors")
    extra = sorted(n for n in ckpt_files if layer_module(n) is not None and n not in wanted)
    if extra and not shared:
        raise ValueError(f"{extra[0]}: in checkpoint ({ckpt_src}) but not in base ({base_src}){HINT}")

    rows = []
    with contextlib.ExitStack() as stack:
        handles: dict[Path, object] = {}

        def handle(path: Path):
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            return handles[path]

        for name, (layer, module) in sorted(wanted.items(), key=lambda kv: (kv[1][0], MODULES.index(kv[1][1]))):
            if name not in ckpt_files:
                if shared:
                    continue
                raise ValueError(f"{name}: in base ({base_files[name]}) but not in checkpoint ({ckpt_src}){HINT}")
            base = handle(base_files[name]).get_slice(name)
            ckpt = handle(ckpt_files[name]).get_slice(name)
            if base.get_shape() != ckpt.get_shape():
                if shared:
                    continue
                raise ValueError(f"{name}: shape {base.get_shape()} in base ({base_files[name]}) "
                                 f"but {ckpt.get_shape()} in checkpoint ({ckpt_files[name]}){HINT}")
            dtype = _compared_dtype(name, base, ckpt, base_files[name], ckpt_files[name], dtype_mismatch)
            delta_sq, base_sq = _squared_norms(base, ckpt, base.get_shape()[0], chunk_rows, dtype)
            delta_norm, base_norm = delta_sq ** 0.5, base_sq ** 0.5
            rel = delta_norm / base_norm if base_norm else float("nan")
            rows.append({"layer": layer, "module": module, "rel_update": rel, "delta_norm": delta_norm,
                         "base_norm": base_norm, "dtype": str(dtype).removeprefix("torch."),
                         "reference_dtype": str(_DTYPES[base.get_dtype()]).removeprefix("torch.")})
    return pd.DataFrame(rows, columns=["layer", "module", "rel_update", "delta_norm", "base_norm", "dtype",
                                       "reference_dtype"])


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("diff", help="relative update per layer x module vs the base",
                               description="Relative Frobenius update per layer x module, checkpoint vs base.")
    ap.add_argument("--base", required=True, help="HF model folder of the base model")
    ap.add_argument("--checkpoint", required=True, help="HF model folder of the checkpoint")
    ap.add_argument("--run", required=True)
    ap.add_argument("--step", required=True, type=int)
    ap.add_argument("--out", required=True, help="parquet file to write")
    ap.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    ap.add_argument("--dtype-mismatch", choices=DTYPE_POLICIES, default="cast",
                    help="a base stored in another dtype than the checkpoint: cast it to the checkpoint's, or refuse")
    ap.add_argument("--tensor-mismatch", choices=TENSOR_POLICIES, default="refuse",
                    help="a matrix missing on one side or of another shape: refuse, or analyse the shared ones only")
    ap.set_defaults(func=main)


def main(args) -> None:
    check_safetensors(args.base)
    check_safetensors(args.checkpoint)
    df = relative_updates(args.base, args.checkpoint, chunk_rows=args.chunk_rows, dtype_mismatch=args.dtype_mismatch,
                          tensor_mismatch=args.tensor_mismatch)
    df.insert(0, "step", args.step)
    df.insert(0, "run", args.run)
    write_parquet(df, args.out)

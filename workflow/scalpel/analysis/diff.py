"""How far each layer x module weight moved: ||W_ckpt - W_base||_F / ||W_base||_F, the paper's metric.

It is a by-product of the update pass (scalpel.analysis.weights.update_metrics), which reads each checkpoint once,
streamed, and sums both squares in float64 over exact float64 terms: `diff_table` turns its sums into this table,
so the workflow never reads a pair twice.

The base is compared as training loaded it: in the checkpoint's dtype. A float32 base against a bfloat16 checkpoint
would otherwise count bf16 rounding (~0.2% of a weight's norm) as an update, more than GRPO's whole final update
(the authors loaded both models in bf16: open-r1_olmo@2ea0f68 experiments/norms/ckpt_weight_anlys.py).
"""
from __future__ import annotations

import pandas as pd

from scalpel.analysis.matrices import DTYPE_POLICIES, MODULES, TENSOR_POLICIES, layer_module  # noqa: F401 (this module's public names)
from scalpel.io import check_safetensors, write_parquet

COLUMNS = ["layer", "module", "rel_update", "delta_norm", "base_norm", "dtype", "reference_dtype"]


def diff_table(update: pd.DataFrame) -> pd.DataFrame:
    """The diff columns (run and step first where `update` has them) from an update_metrics table's delta_sq and
    base_sq: delta_norm, base_norm and their ratio, NaN for a zero base."""
    delta_norm = [float(x) ** 0.5 for x in update.delta_sq]
    base_norm = [float(x) ** 0.5 for x in update.base_sq]
    out = pd.DataFrame({"layer": update.layer, "module": update.module,
                        "rel_update": [d / b if b else float("nan") for d, b in zip(delta_norm, base_norm)],
                        "delta_norm": delta_norm, "base_norm": base_norm, "dtype": update.dtype,
                        "reference_dtype": update.reference_dtype})
    keys = [c for c in ("run", "step") if c in update]
    return pd.concat([update[keys], out], axis=1) if keys else out


def relative_updates(base_dir, ckpt_dir, dtype_mismatch: str = "cast", tensor_mismatch: str = "refuse",
                     **stream) -> pd.DataFrame:
    """One row per (layer, module) in layer, MODULES order: the COLUMNS, dtype the checkpoint's (in which both were
    compared), reference_dtype the base's as stored. `dtype_mismatch`: cast a base of another dtype to the
    checkpoint's, or refuse it; `tensor_mismatch`: a matrix missing on one side or of another shape is an error
    (refuse), or left out (shared); `stream`: threads,
    chunk_bytes, direct, as update_metrics takes them."""
    from scalpel.analysis.weights import update_metrics  # torch: not for `diff --update`

    return diff_table(update_metrics(base_dir, ckpt_dir, dtype_mismatch=dtype_mismatch,
                                     tensor_mismatch=tensor_mismatch, **stream))


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("diff", help="relative update per layer x module vs the base",
                               description="Relative Frobenius update per layer x module, checkpoint vs base: from "
                                           "the `weights update` table of the pair (--update), or read from both "
                                           "folders (--base, --checkpoint, --run, --step).")
    ap.add_argument("--update", help="the pair's `scalpel weights update` parquet: its sums give the table")
    ap.add_argument("--base", help="HF model folder of the base model")
    ap.add_argument("--checkpoint", help="HF model folder of the checkpoint")
    ap.add_argument("--run")
    ap.add_argument("--step", type=int)
    ap.add_argument("--out", required=True, help="parquet file to write")
    ap.add_argument("--dtype-mismatch", choices=DTYPE_POLICIES, default="cast",
                    help="a base stored in another dtype than the checkpoint: cast it to the checkpoint's, or refuse")
    ap.add_argument("--tensor-mismatch", choices=TENSOR_POLICIES, default="refuse",
                    help="a matrix missing on one side or of another shape: refuse, or analyse the shared ones only")
    ap.set_defaults(func=main, parser=ap)


def main(args) -> None:
    folders = (args.base, args.checkpoint, args.run, args.step)
    if args.update:
        if any(x is not None for x in folders):
            args.parser.error("--update takes no --base, --checkpoint, --run or --step: the table has them")
        df = diff_table(pd.read_parquet(args.update))
    else:
        if any(x is None for x in folders):
            args.parser.error("give --update, or all of --base, --checkpoint, --run and --step")
        check_safetensors(args.base)
        check_safetensors(args.checkpoint)
        df = relative_updates(args.base, args.checkpoint, dtype_mismatch=args.dtype_mismatch,
                              tensor_mismatch=args.tensor_mismatch)
        df.insert(0, "step", args.step)
        df.insert(0, "run", args.run)
    write_parquet(df, args.out)

"""KL(base || checkpoint), teacher-forced on a reference set, as the authors measured it on MATH-500.

Each example (chat-templated prompt plus the reference solution as the assistant turn) goes once through each model,
one example at a time, so there is no padding. At every position t the next-token distributions give
    KL_t = sum_v p_base(v) * (log p_base(v) - log p_ckpt(v)),
computed from the logits in float64 (`log_softmax`) whatever the models' dtype. Reported:
- `mean_kl`: KL_t averaged over the example's positions (prompt tokens included, and the last position), then over
  examples. This is the authors' number: Neelectric/open-r1_olmo@2ea0f68:experiments/kl_tests.py computes
  `torch.mean(torch.sum(p_base * (log p_base - log p_ft), -1))` for one example at a time and averages those (from
  commit af2e975 on, which produced their published kls_500.json; `reduction="batchmean"` only in earlier drafts);
- `mean_seq_kl` (ours, not the authors'): KL_t summed over the example's positions, then averaged over examples;
- `token_kl` (ours): KL_t pooled over every token of every example.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from scalpel.io import check_safetensors, read_jsonl, write_json

log = logging.getLogger(__name__)


def encode(tokenizer, example: dict, max_length: int | None = None) -> tuple[torch.Tensor, bool]:
    """Token ids [1, T] of prompt + completion as one chat-templated conversation, and whether it was cut."""
    messages = list(example["prompt"]) + list(example["completion"])
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if max_length is not None and ids.shape[1] > max_length:
        return ids[:, :max_length], True
    return ids, False


def token_kl(base_logits: torch.Tensor, ckpt_logits: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """KL(base || ckpt) per position: [T, V] logits -> [T] float64.

    The arithmetic is float64 (log_softmax included), in chunks of positions to bound memory: with float32, the
    rounding of log p - log q is ~1e-7 * |log p| per term, which at a per-token KL of ~1e-6 (an early GRPO
    checkpoint) is already a 1% error on a 64-token vocabulary and grows with the vocabulary.
    """
    out = []
    for b, c in zip(base_logits.split(chunk), ckpt_logits.split(chunk)):
        log_p = torch.log_softmax(b.double(), dim=-1)
        log_q = torch.log_softmax(c.double(), dim=-1)
        out.append((log_p.exp() * (log_p - log_q)).sum(dim=-1))
    return torch.cat(out)


def _max_positions(*models) -> int | None:
    limits = [getattr(m.config, "max_position_embeddings", None) for m in models]
    limits = [n for n in limits if n]
    return min(limits) if limits else None


@torch.inference_mode()
def kl_divergence(base_model, ckpt_model, tokenizer, examples: list[dict], device: str = "cpu",
                  max_length: int | None = None) -> dict:
    """KL(base || ckpt) over `examples` ({"prompt": [...], "completion": [...]} chat rows).

    `max_length` (default: the models' max_position_embeddings) cuts longer sequences, keeping their start;
    `n_truncated` says how many were cut.
    """
    if not examples:
        raise ValueError("kl_divergence: no reference examples")
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (base_model, ckpt_model)]
    if sizes[0] != sizes[1]:  # KL compares two distributions over one vocabulary, position by position
        raise ValueError(f"kl_divergence: {sizes[0]} output tokens in the reference but {sizes[1]} in the checkpoint "
                         f"({getattr(ckpt_model.config, '_name_or_path', '')}): no KL over different vocabularies")
    if max_length is None:
        max_length = _max_positions(base_model, ckpt_model)
    base_model.eval()
    ckpt_model.eval()
    per_example, per_example_sum, lengths, truncated = [], [], [], 0
    for i, example in enumerate(examples):
        ids, cut = encode(tokenizer, example, max_length)
        truncated += cut
        ids = ids.to(device)
        kl_t = token_kl(base_model(input_ids=ids).logits[0], ckpt_model(input_ids=ids).logits[0])
        total = float(kl_t.sum())
        if not math.isfinite(total):
            raise FloatingPointError(f"kl_divergence: example {i}: KL is {total}")
        per_example.append(total / ids.shape[1])
        per_example_sum.append(total)
        lengths.append(int(ids.shape[1]))
    if truncated:
        log.warning("%d of %d examples cut to %d tokens", truncated, len(examples), max_length)
    n = len(per_example)
    return {
        "mean_kl": sum(per_example) / n,
        "mean_seq_kl": sum(per_example_sum) / n,
        "token_kl": sum(per_example_sum) / sum(lengths),
        "n_examples": n,
        "n_tokens": sum(lengths),
        "n_truncated": truncated,
        "max_length": max_length,
        "per_example": per_example,
        "per_example_tokens": lengths,
    }


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("kl", help="teacher-forced KL(base || checkpoint) on a reference set",
                               description="Teacher-forced KL(base || checkpoint) on a reference set.")
    ap.add_argument("--base", required=True, help="HF model folder of the base model")
    ap.add_argument("--checkpoint", required=True, help="HF model folder of the checkpoint")
    ap.add_argument("--reference", required=True, help="JSONL of {prompt, completion} chat rows (MATH-500)")
    ap.add_argument("--run", required=True)
    ap.add_argument("--step", required=True, type=int)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--limit", type=int, default=None, help="only the first N reference examples")
    ap.add_argument("--dtype", default="float32", help="dtype the models are loaded in (bfloat16 on GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--tokenizer", default=None, help="default: the checkpoint's (as the authors)")
    ap.set_defaults(func=main)


def main(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer


    check_safetensors(args.base)
    check_safetensors(args.checkpoint)
    examples = read_jsonl(args.reference)[: args.limit]
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.checkpoint)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=dtype).to(args.device)
    ckpt = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).to(args.device)
    loaded = time.perf_counter()
    result = kl_divergence(base, ckpt, tokenizer, examples, device=args.device, max_length=args.max_length)
    result.update(load_s=loaded - start, seconds=time.perf_counter() - loaded)  # for the throughput table
    log.info("%s step %d: mean KL %.6g per token (%.6g per sequence) over %d examples, %d tokens", args.run,
             args.step, result["mean_kl"], result["mean_seq_kl"], result["n_examples"], result["n_tokens"])
    write_json({"run": args.run, "step": args.step, "base": args.base, "checkpoint": args.checkpoint,
                 "reference": args.reference, "dtype": args.dtype, **result}, args.out)

"""The paper's GPU path on one device, without the hub: a randomly initialised OLMo-2 (about 1B parameters by
default; size by flags) built locally, TRL SFT and GRPO steps through `accelerate launch` with DeepSpeed ZeRO-3 in
bf16 (the training rules' own command, `python -m scalpel train`), generation through transformers, and lm-eval's HF
backend on a few paper-task items (tests/fixtures/paper_task_rows.json standing in for the hub datasets). Prints
tokens per second, seconds per step and MFU.

    python workflow/scripts/gpu_smoke.py --outdir /tmp/gpu-smoke                   # one GPU, ~1.2B parameters
    python workflow/scripts/gpu_smoke.py --outdir /tmp/s --cpu --hidden-size 32 --layers 2 --heads 2 \\
        --intermediate-size 64 --vocab-size 512 --peak-tflops 1                     # the CPU test's tiny model
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow"))

# Dense bf16 peak of one GPU in TFLOP/s (NVIDIA H100 and H200 SXM datasheets: 989 without sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outdir", required=True)
    p.add_argument("--hidden-size", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--intermediate-size", type=int, default=8192)
    p.add_argument("--vocab-size", type=int, default=100352, help="embedding rows (OLMo-2's); the tokenizer is smaller")
    p.add_argument("--max-length", type=int, default=1024, help="SFT max_length and the model's positions")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sft-batch", type=int, default=8, help="sequences per SFT step")
    p.add_argument("--grpo-prompts", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt (transformers)")
    p.add_argument("--eval-limit", type=int, default=2)
    p.add_argument("--zero-stage", type=int, choices=[2, 3], default=3)
    p.add_argument("--cpu", action="store_true", help="float32 on CPU (gloo), for the tests")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak; default: from the GPU's name")
    p.add_argument("--task-rows", default=str(ROOT / "tests/fixtures/paper_task_rows.json"))
    return p


def training_flops_per_token(params: int, layers: int, hidden: int, seq: float) -> float:
    """6N for the weights' forward and backward, plus 12 L d s for attention's (PaLM, arXiv 2204.02311, appendix B);
    gradient checkpointing's recomputation is not counted, as MFU leaves it out."""
    return 6 * params + 12 * layers * hidden * seq


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float | None) -> float:
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12) if peak_tflops else float("nan")


def build_base(a, outdir: Path) -> int:
    from scalpel.data import synthetic
    from scalpel.model import base
    from transformers import Olmo2ForCausalLM

    world = synthetic.build_world(0, synthetic.with_defaults({"train_problems": 64, "eval_problems": 4,
                                                              "entities": 8, "instruction_probes": 4}))
    tok = base.build_tokenizer(synthetic.corpus_lines(world), 1024)
    cfg = {"hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "max_position_embeddings": max(a.max_length, 4096)}
    model = Olmo2ForCausalLM(base.olmo2_config(cfg, max(a.vocab_size, len(tok)), tok.pad_token_id,
                                               tok.bos_token_id, tok.eos_token_id))
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model.to(dtype=_dtype(a)).save_pretrained(outdir / "base")
    tok.save_pretrained(outdir / "base")
    rows = world["sft"][:1] * (a.steps * a.sft_batch)  # one conversation: every step's tokens are known
    _write_jsonl(rows, outdir / "sft.jsonl")
    _write_jsonl(world["grpo"][: a.steps * a.grpo_prompts], outdir / "grpo.jsonl")
    return model.num_parameters()


def _dtype(a):
    import torch

    return torch.float32 if a.cpu else torch.bfloat16


def _write_jsonl(rows, path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def train(a, outdir: Path, method: str) -> list[dict]:
    """One run through the training rules' command; its log history (scalpel.train.trainer.Throughput's rates)."""
    import yaml
    from scalpel import config
    from scalpel.train import launch

    common = {"bf16": not a.cpu, "use_cpu": a.cpu, "gradient_checkpointing": not a.cpu, "logging_steps": 1,
              "report_to": "none", "per_device_train_batch_size": 64}
    args = {"sft": {**common, "max_length": a.max_length, "completion_only_loss": False},
            "grpo": {**common, "num_generations": a.num_generations, "max_completion_length": a.max_completion_length,
                     "beta": 0.0, "loss_type": "dr_grpo", "scale_rewards": "none", "reward_weights": [1.0, 0.2]}}
    batch = a.sft_batch if method == "sft" else a.grpo_prompts * a.num_generations
    cfg = {"seed": 0, "model": {"dtype": "float32" if a.cpu else "bfloat16"}, "train_defaults": args,
           "launch": {"deepspeed": {"enabled": True, "zero_stage": a.zero_stage}},
           "runs": {method: {"method": method, "steps": a.steps, "checkpoints": 1, "global_batch_size": batch}}}
    run_dir = outdir / method
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(config.resolve_run(cfg, method)))
    acc = launch.write_launch_files(run_dir / "launch", a.zero_stage, 1, use_cpu=a.cpu, bf16=not a.cpu)
    cmd = launch.train_command(cfg["launch"], 1, acc) + [
        "train", "--spec", run_dir / "spec.yaml", "--base", outdir / "base", "--data", outdir / f"{method}.jsonl",
        "--state", run_dir / "state"]
    path = os.pathsep.join(filter(None, [str(ROOT / "workflow"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run([str(c) for c in cmd], env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{method} training failed: see {run_dir / 'train.log'}")
    return json.loads((run_dir / "state/trainer_log.json").read_text())


def report_training(method: str, history: list[dict], params: int, a, peak) -> dict:
    steps = [e for e in history if "step_s" in e]
    steady = steps[1:] or steps
    tokens = [round(e["tokens_per_s"] * e["step_s"] * e["steps_timed"]) for e in steps]
    seq = statistics.mean(tokens) / steps[-1]["batch"]
    tokens_per_s = statistics.median(e["tokens_per_s"] for e in steady)
    out = {"step_s": statistics.median(e["step_s"] for e in steady), "tokens_per_step": tokens,
           "batch": steps[-1]["batch"], "tokens_per_s": tokens_per_s,
           "mfu": mfu(training_flops_per_token(params, a.layers, a.hidden_size, seq), tokens_per_s, peak)}
    if method == "grpo":
        out["generated_tokens_per_s"] = statistics.median(e["generated_tokens_per_s"] for e in steady)
    return out


def generate(a, outdir: Path, params: int, peak) -> dict:
    """transformers' generate on a batch of prompts, exactly `new_tokens` each (min = max new tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cpu" if a.cpu else "cuda"
    tok = AutoTokenizer.from_pretrained(outdir / "base", padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(outdir / "base", dtype=_dtype(a)).to(device)
    prompts = [json.loads(line)["prompt"] for line in (outdir / "grpo.jsonl").read_text().splitlines()]
    batch = tok.apply_chat_template(prompts, add_generation_prompt=True, return_tensors="pt", padding=True,
                                     return_dict=True).to(device)
    kwargs = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=True, temperature=0.6)
    model.generate(**batch, max_new_tokens=2, min_new_tokens=2)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(**batch, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    generated = int((out[:, batch["input_ids"].shape[1]:] >= 0).sum())
    return {"prompts": len(prompts), "generated_tokens": generated, "seconds": seconds,
            "tokens_per_s": generated / seconds, "mfu": mfu(2 * params, generated / seconds, peak)}


def evaluate(a, outdir: Path) -> dict:
    """lm-eval's HF backend (the package's evaluate) on paper_math500 and paper_aime24 rows held locally."""
    import yaml
    from scalpel.eval import evaluate as ev
    from scalpel.tasks.paper import TASK_DIR

    rows, folder = json.loads(Path(a.task_rows).read_text()), outdir / "tasks"
    folder.mkdir(exist_ok=True)
    for task, key in (("paper_math500", "math500"), ("paper_aime24", "aime24")):
        files = {}
        for split, split_rows in rows[key].items():
            files[split] = str(folder / f"{task}.{split}.jsonl")
            _write_jsonl(split_rows, Path(files[split]))
        (folder / f"{task}.yaml").write_text(yaml.safe_dump({
            "include": str(TASK_DIR / f"{task}.yaml"), "task": task, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": files}}))
    _, res = ev.evaluate(str(outdir / "base"), ["paper_math500", "paper_aime24"], str(folder), run="smoke", step=0,
                         backend="hf", dtype="float32" if a.cpu else "bfloat16", batch_size=8, limit=a.eval_limit,
                         device="cpu" if a.cpu else "cuda", gen_kwargs={"max_gen_toks": a.new_tokens})
    speed = res["throughput"]
    return {"items": sum(t["items"] for t in speed["tasks"].values()), "generated_tokens": speed["generated_tokens"],
            "tokens_per_s": speed["generated_tokens_per_s"], "load_s": speed["load_s"]}


def peak_tflops(a) -> float | None:
    if a.peak_tflops or a.cpu:
        return a.peak_tflops
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main(argv=None) -> None:
    a = make_parser().parse_args(argv)
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    peak = peak_tflops(a)
    params = build_base(a, outdir)
    results = {"params": params, "peak_tflops": peak, "device": "cpu" if a.cpu else _device_name()}
    for method in ("sft", "grpo"):
        results[method] = report_training(method, train(a, outdir, method), params, a, peak)
    results["generate"] = generate(a, outdir, params, peak)
    results["lm_eval"] = evaluate(a, outdir)
    (outdir / "gpu_smoke.json").write_text(json.dumps(results, indent=1))
    print(f"device {results['device']}, {params:,} parameters, peak {peak} TFLOP/s")
    for part in ("sft", "grpo", "generate", "lm_eval"):
        print(part, " ".join(f"{k}={v}" for k, v in results[part].items()))


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name()


if __name__ == "__main__":
    main()

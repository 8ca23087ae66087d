"""GRPO generation in vLLM's server mode, as the authors ran it: one GPU of the node serves, the others train.

`python -m scalpel vllm-server --model M [options] -- <training command>` starts TRL's vLLM server (the command
`trl vllm-serve` builds: vLLM's own server with the weight-transfer endpoints the trainer pushes weights through) on
the last GPU the job was given, runs the training command on the other GPUs with SCALPEL_VLLM_SERVER_URL pointing at
it, and stops the server when training ends. The trainer waits for the server itself (TRL's
`vllm_server_timeout`). The workflow puts this in front of `accelerate launch` for GRPO runs when
`launch.vllm.mode` is `server`, with one training process fewer than the job's GPUs.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess

log = logging.getLogger(__name__)
URL_VARIABLE = "SCALPEL_VLLM_SERVER_URL"


def split_gpus(visible: list[str]) -> tuple[list[str], str]:
    """(training GPUs, serving GPU): the serving GPU is the last one."""
    if len(visible) < 2:
        raise ValueError(f"vLLM server mode needs at least 2 GPUs in the job (one serves, the rest train), got "
                         f"{len(visible)}: set launch.vllm.mode to colocate or request more GPUs")
    return visible[:-1], visible[-1]


def visible_gpus(environ=os.environ) -> list[str]:
    """The job's GPUs: CUDA_VISIBLE_DEVICES as Slurm sets it, else every device torch sees."""
    if environ.get("CUDA_VISIBLE_DEVICES"):
        return environ["CUDA_VISIBLE_DEVICES"].split(",")
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def server_command(model: str, port: int, gpu_memory_utilization: float, dtype: str,
                   max_model_len: int | None = None) -> list[str]:
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    return build_command(ScriptArguments(model=model, host="127.0.0.1", port=port, dtype=dtype,
                                         gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len))


def run(train_cmd: list[str], model: str, port: int, gpu_memory_utilization: float, dtype: str,
        max_model_len: int | None, server_log: str, environ=os.environ) -> int:
    train_gpus, serve_gpu = split_gpus(visible_gpus(environ))
    serve_env = dict(environ, CUDA_VISIBLE_DEVICES=serve_gpu, VLLM_SERVER_DEV_MODE="1")
    train_env = dict(environ, CUDA_VISIBLE_DEVICES=",".join(train_gpus), **{URL_VARIABLE: f"http://127.0.0.1:{port}"})
    command = server_command(model, port, gpu_memory_utilization, dtype, max_model_len)
    log.info("vLLM server on GPU %s: %s (log: %s)", serve_gpu, " ".join(command), server_log)
    with open(server_log, "w") as out:
        server = subprocess.Popen(command, env=serve_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        log.info("training on GPUs %s: %s", ",".join(train_gpus), " ".join(train_cmd))
        return subprocess.call(train_cmd, env=train_env)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("vllm-server", help="GRPO's vLLM server on the last GPU around a training command",
                              description=__doc__.split("\n\n")[0],
                              usage="scalpel vllm-server [options] -- <training command>")
    p.add_argument("--model", required=True, help="the base model folder (the policy's starting weights)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--server-log", default="vllm_server.log")
    p.add_argument("train_command", nargs=argparse.REMAINDER, help="-- then the training command")
    p.set_defaults(func=main)


def main(a) -> None:
    if a.train_command[:1] != ["--"] or len(a.train_command) < 2:
        raise SystemExit("usage: scalpel vllm-server [options] -- <training command>")
    raise SystemExit(run(a.train_command[1:], a.model, a.port, a.gpu_memory_utilization, a.dtype, a.max_model_len,
                         a.server_log))

"""How a training run is launched: plain `python -m scalpel`, or `accelerate launch` with DeepSpeed ZeRO-2/3.

Two files describe a DeepSpeed launch, both written by `write_launch_files`:

- `ds_config.json`, the DeepSpeed config. Batch, accumulation, clipping and bucket sizes are "auto", so the HF
  Trainer under TRL fills them from the run's GRPOConfig/SFTConfig (and refuses values that disagree with it);
  no offload; for ZeRO-3, `stage3_gather_16bit_weights_on_model_save`, so every trainer checkpoint holds gathered
  full-shape safetensors, which `train.export_checkpoint` copies.
- `accelerate.yaml`, the accelerate config: `distributed_type: DEEPSPEED` pointing at the json. When a json is given,
  accelerate refuses zero_stage, offload, gradient_accumulation_steps, gradient_clipping, zero3_save_16bit_model and
  mixed_precision in the yaml (they belong to the json), so none of them is written.

Only `accelerate launch` with `distributed_type: DEEPSPEED` starts several CPU processes: `--cpu`, MULTI_CPU and FSDP
configs silently run one process on CPU, and torchrun/deepspeed with a json in the trainer args fail on the batch
size check (research/feasibility-ml.md, section 5). Whether the processes use CPU (gloo) or GPU (nccl) is decided by
the run's `use_cpu` TRL argument; the yaml's `use_cpu` only records it.

`train_command` returns the launcher prefix that replaces `python -m scalpel` in the training rule:

    prefix = train_command(spec["launch"], num_processes, config_file=write_launch_files(...))
    subprocess.run([*prefix, "train", "--spec", ...])

As a command: `python -m scalpel.launch --stage 3 --num-processes 2 --outdir DIR [--cpu] [--bf16]
[--persistence-threshold N]` writes both files and prints the path of the yaml.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from .io import atomic_output

DS_CONFIG = "ds_config.json"
ACCELERATE_CONFIG = "accelerate.yaml"
# accelerate raises when these appear in the yaml beside a deepspeed_config_file (utils/dataclasses.py,
# DeepSpeedPlugin._deepspeed_config_checks); mixed_precision too, at top level.
FORBIDDEN_WITH_FILE = ("zero_stage", "offload_optimizer_device", "offload_param_device", "offload_param_nvme_path",
                       "offload_optimizer_nvme_path", "gradient_accumulation_steps", "gradient_clipping",
                       "zero3_save_16bit_model")


def deepspeed_config(stage: int, *, bf16: bool, param_persistence_threshold: int | None = None) -> dict:
    """The DeepSpeed json for ZeRO `stage` (2 or 3), no offload.

    `bf16` must equal the run's TRL `bf16` argument (the HF Trainer raises on a mismatch rather than guess).
    `param_persistence_threshold` (ZeRO-3 only): parameters with at most this many elements are kept whole on every
    rank. None leaves it "auto" (10 x hidden_size, which keeps every parameter of a tiny model whole, so nothing is
    sharded); 0 shards every parameter.
    """
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, not {stage!r}")
    zero: dict = {
        "stage": stage,
        "offload_optimizer": {"device": "none"},
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        if param_persistence_threshold is not None:
            raise ValueError("param_persistence_threshold is a ZeRO-3 setting (stage 2 never shards parameters)")
        zero.update(allgather_partitions=True, allgather_bucket_size=int(5e8), reduce_scatter=True)
    else:
        if param_persistence_threshold is not None and param_persistence_threshold < 0:
            raise ValueError(f"param_persistence_threshold must be >= 0, not {param_persistence_threshold}")
        zero.update(
            offload_param={"device": "none"},
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold=("auto" if param_persistence_threshold is None
                                                else int(param_persistence_threshold)),
            stage3_max_live_parameters=int(1e9),
            stage3_max_reuse_distance=int(1e9),
            stage3_gather_16bit_weights_on_model_save=True,
        )
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # the Trainer logs; DeepSpeed's own step lines only clutter the job log
        "wall_clock_breakdown": False,
    }


def accelerate_config(ds_config_path, *, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
                      main_process_ip: str | None = None, main_process_port: int = 29500, use_cpu: bool = False,
                      zero3_init: bool = True) -> dict:
    """The accelerate config that launches `num_processes` processes in all with DeepSpeed from `ds_config_path`.

    `zero3_init` (accelerate's zero3_init_flag) partitions the model while `from_pretrained` loads it; it only means
    something for ZeRO-3 (accelerate turns it off, with a warning, for stage 2), so pass False there.
    One machine: static rendezvous on localhost (`main_process_port` 0 picks a free port). Several machines (one
    `accelerate launch` per node, e.g. under `srun`): c10d rendezvous at `main_process_ip:main_process_port`, with
    DeepSpeed's "standard" (torchrun) multinode launcher instead of its pdsh default; each node then passes its own
    `--machine_rank` on the command line.
    """
    if num_processes < 1 or num_machines < 1:
        raise ValueError("num_processes and num_machines must be at least 1")
    if num_processes % num_machines:
        raise ValueError(f"num_processes ({num_processes}) must be a multiple of num_machines ({num_machines})")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank {machine_rank} outside 0..{num_machines - 1}")
    multinode = num_machines > 1
    if multinode and not main_process_ip:
        raise ValueError("several machines need main_process_ip (the address of the machine of rank 0)")
    ds = {"deepspeed_config_file": str(Path(ds_config_path).resolve()), "zero3_init_flag": bool(zero3_init)}
    if multinode:
        ds["deepspeed_multinode_launcher"] = "standard"
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": ds,
        "num_machines": num_machines,
        "num_processes": num_processes,
        "machine_rank": machine_rank,
        "main_process_port": main_process_port,
        "rdzv_backend": "c10d" if multinode else "static",
        "same_network": not multinode,
        "use_cpu": bool(use_cpu),
    }
    if main_process_ip:
        config["main_process_ip"] = main_process_ip
    return config


def write_launch_files(outdir, stage: int, num_processes: int, use_cpu: bool, bf16: bool, threshold: int | None = None,
                       **accelerate_kwargs) -> Path:
    """Write `ds_config.json` and `accelerate.yaml` into `outdir`; return the yaml's path.

    `accelerate_kwargs` go to `accelerate_config` (num_machines, machine_rank, main_process_ip, main_process_port).
    """
    outdir = Path(outdir)
    ds_path, acc_path = outdir / DS_CONFIG, outdir / ACCELERATE_CONFIG
    ds = deepspeed_config(stage, bf16=bf16, param_persistence_threshold=threshold)
    acc = accelerate_config(ds_path, num_processes=num_processes, use_cpu=use_cpu, zero3_init=stage == 3,
                            **accelerate_kwargs)
    with atomic_output(ds_path) as tmp:
        tmp.write_text(json.dumps(ds, indent=2) + "\n")
    with atomic_output(acc_path) as tmp:
        tmp.write_text(yaml.safe_dump(acc, sort_keys=False))
    return acc_path


def train_command(launch: dict, num_processes: int = 1, config_file=None,
                  extra_launch_args: Sequence[str] = ()) -> list[str]:
    """The command prefix that runs `scalpel` (append the stage and its arguments: `train --spec ...`).

    `launch` is the config's (and each spec's) `launch` block. With `launch.deepspeed.enabled` false it is
    `["python", "-m", "scalpel"]`, one process. With it true it is
    `["accelerate", "launch", "--config_file", <yaml>, "--num_processes", <n>, *extra_launch_args, "-m", "scalpel"]`,
    where the yaml comes from `write_launch_files` and `extra_launch_args` are further accelerate flags (on several
    machines, each node's `--machine_rank`). `--num_processes` overrides the yaml's count, so one yaml serves any.
    Several processes without DeepSpeed are refused: accelerate would silently run one on CPU.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, not {num_processes}")
    if not launch.get("deepspeed", {}).get("enabled", False):
        if num_processes != 1 or extra_launch_args:
            raise ValueError("several processes need launch.deepspeed.enabled (plain python runs one process)")
        return ["python", "-m", "scalpel"]
    if config_file is None:
        raise ValueError("launch.deepspeed.enabled needs the accelerate config file (write_launch_files)")
    return ["accelerate", "launch", "--config_file", str(config_file), "--num_processes", str(num_processes),
            *map(str, extra_launch_args), "-m", "scalpel"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m scalpel.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", type=int, choices=[2, 3], required=True, help="ZeRO stage")
    p.add_argument("--num-processes", type=int, required=True, help="processes in all (over every machine)")
    p.add_argument("--outdir", required=True, help=f"folder for {DS_CONFIG} and {ACCELERATE_CONFIG}")
    p.add_argument("--cpu", action="store_true", help="the run trains on CPU (gloo); TRL's use_cpu decides")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision; must equal the run's TRL bf16")
    p.add_argument("--persistence-threshold", type=int, default=None,
                   help="ZeRO-3 stage3_param_persistence_threshold (default auto; 0 shards every parameter)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--main-process-ip", default=None)
    p.add_argument("--main-process-port", type=int, default=29500)
    a = p.parse_args(argv)
    try:
        path = write_launch_files(a.outdir, a.stage, a.num_processes, a.cpu, a.bf16, a.persistence_threshold,
                                  num_machines=a.num_machines, machine_rank=a.machine_rank,
                                  main_process_ip=a.main_process_ip, main_process_port=a.main_process_port)
    except ValueError as err:
        p.error(str(err))
    print(path)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])

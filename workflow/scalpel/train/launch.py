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
size check (accelerate 1.15, TRL 1.16, DeepSpeed 0.19; tests/test_deepspeed.py runs the working one). Whether the
processes use CPU (gloo) or GPU (nccl) is decided by
the run's `use_cpu` TRL argument; the yaml's `use_cpu` only records it.

`train_command` returns the launcher prefix that replaces `python -m scalpel` in the training rule:

    prefix = train_command(spec["launch"], num_processes, config_file=write_launch_files(...))
    subprocess.run([*prefix, "train", "--spec", ...])

As a command: `python -m scalpel launch files --stage 3 --num-processes 2 --outdir DIR [--cpu] [--bf16]
[--persistence-threshold N]` writes both files and prints the path of the yaml.

Several nodes (`launch.nodes`), inside a Slurm job, in two steps that read the Slurm environment:

    python -m scalpel launch slurm --machines N --config-file YAML --cpu-processes P train --spec ...

execs `srun` with one task per node (per machine), each running

    python -m scalpel launch node --config-file YAML --cpu-processes P train --spec ...

which execs `accelerate launch` with its machine rank (SLURM_PROCID), the first host of the job as the rendezvous
address and the process count of all machines (the GPUs of its node, or P without GPUs, times N).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from scalpel.io import atomic_output

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
    `accelerate launch` per node, e.g. under `srun`): rendezvous at `main_process_ip:main_process_port`, with
    DeepSpeed's "standard" (torchrun) multinode launcher instead of its pdsh default; each node then passes its own
    `--machine_rank` on the command line. accelerate 1.15 reads neither `rdzv_backend` nor `same_network` from the
    yaml (its CLI defaults, static and false, always win), so the "c10d" written here is not what runs: the
    workflow's node launcher (`node_command`) gives `--rdzv_backend` on the command line instead.
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


# Several nodes under Slurm -------------------------------------------------------------------------------------------

# What a nested srun may inherit: the job's identity. The step's own SLURM_* (task and CPU counts, --cpus-per-gpu) are
# srun input variables that would override or contradict the flags given (as the Slurm executor's jobstep does).
SLURM_JOB_IDENTITY = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_CONF", "SLURM_SUBMIT_DIR",
                      "SLURM_SUBMIT_HOST")


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[07-08],cpu1" -> "gpu07"), ranges expanded by Slurm's scontrol."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def rendezvous_port(env: Mapping[str, str]) -> int:
    """A port per job (20000-39999), so that jobs sharing their first node do not collide."""
    return 20000 + int(env["SLURM_JOB_ID"]) % 20000


def gres_gpus(gres: str) -> int:
    """GPUs per node in a Slurm gres request: "gpu:8" and "gpu:h100:8" -> 8; 0 without GPUs."""
    gpu = next((item.split(":") for item in gres.split(",") if item.split(":")[0] == "gpu"), None)
    if gpu is None:
        return 0
    return int(gpu[-1]) if len(gpu) > 1 and gpu[-1].isdigit() else 1


def job_shape(job_id: str) -> tuple[int, int]:
    """(nodes, CPUs per node) of a running Slurm job, from scontrol: the Slurm executor's job step, where the rule
    runs, lacks the batch script's SLURM_JOB_NUM_NODES and SLURM_JOB_CPUS_PER_NODE."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    nodes = int(fields["NumNodes"].split("-")[0])
    return nodes, int(fields["NumCPUs"]) // nodes


def srun_command(env: Mapping[str, str], machines: int, node_args: Sequence[str],
                 shape: tuple[int, int] | None = None) -> tuple[list[str], dict]:
    """The srun that starts `machines` node launchers over the job's nodes, and its environment.

    `shape`: the job's (nodes, CPUs per node), by default `job_shape` of SLURM_JOB_ID. One task per node on a real
    allocation; several on a smaller one (a test cluster: each task is then a machine that shares its node). Each
    task gets its node's CPUs (split between the tasks on it) and, by Slurm's default, all the job's GPUs on its node.
    `--overlap` lets it start inside a job step too, but there Slurm's `--signal` (to the job steps) would also reach
    this srun, which answers SIGTERM by killing its step before training saves: the workflow runs it from the batch
    script (the train rules' `mpi` resource).
    """
    if "SLURM_JOB_ID" not in env:
        raise ValueError("several machines (launch.nodes) train inside a Slurm job: run with a Slurm profile")
    nodes, cpus_per_node = shape or job_shape(env["SLURM_JOB_ID"])
    if machines % nodes:
        raise ValueError(f"launch.nodes ({machines}) is not a multiple of the job's {nodes} nodes")
    cpus_per_task = max(1, cpus_per_node // (machines // nodes))
    cmd = ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={machines}", f"--cpus-per-task={cpus_per_task}",
           "--kill-on-bad-exit=1", sys.executable, "-m", "scalpel", "launch", "node", *node_args]
    step_env = {k: v for k, v in env.items()
                if not k.startswith(("SLURM_", "SRUN_", "SBATCH_")) or k in SLURM_JOB_IDENTITY}
    return cmd, step_env


def node_command(env: Mapping[str, str], config_file, cpu_processes: int) -> list[str]:
    """The `accelerate launch ... -m scalpel` prefix of one node launcher: a task of `srun_command`'s step.

    Machine rank SLURM_PROCID of SLURM_NTASKS machines; rendezvous at the job's first host, where task 0 runs;
    processes per machine: the GPUs Slurm gave the node (SLURM_GPUS_ON_NODE), else `cpu_processes`. Static
    rendezvous: machine rank 0 hosts the store and ranks follow machine ranks. (accelerate's yaml `rdzv_backend` is
    never read: its CLI default "static" wins, so the flag is given here.)
    """
    machines, rank = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
    per_machine = int(env.get("SLURM_GPUS_ON_NODE") or 0) or cpu_processes
    flags = ["--num_machines", machines, "--machine_rank", rank,
             "--main_process_ip", first_host(env["SLURM_JOB_NODELIST"]), "--main_process_port", rendezvous_port(env),
             "--rdzv_backend", "static", "--deepspeed_multinode_launcher", "standard"]
    return train_command({"deepspeed": {"enabled": True}}, machines * per_machine, config_file, flags)


def vllm_serves(launch: dict, method: str) -> bool:
    """Whether a run's training job also serves vLLM (GRPO with `launch.vllm.mode: server`)."""
    return launch["vllm"]["enabled"] and launch["vllm"]["mode"] == "server" and method == "grpo"


def train_processes(launch: dict, method: str, resources: Mapping) -> int:
    """Training processes of one job: one per GPU of the job (less the one serving vLLM in server mode);
    `launch.deepspeed.cpu_processes` on a CPU-only job; one without DeepSpeed."""
    if not launch["deepspeed"]["enabled"]:
        return 1
    gpus = int(resources.get("gpu", 0)) or gres_gpus(resources.get("gres", ""))  # gres: per node
    if gpus and vllm_serves(launch, method):
        if gpus < 2:
            raise ValueError("launch.vllm.mode server needs 2 or more GPUs for train_grpo: one serves")
        return gpus - 1
    return gpus or launch["deepspeed"]["cpu_processes"]


def train_job_resources(launch: dict) -> dict:
    """Extra Slurm resources of a training job. Several nodes: N nodes, and `mpi` so that the Slurm executor runs the
    rule in the batch script, not in a job step (--signal without B: then reaches training only: an srun signalled
    with TERM kills the step it started); `tasks` is one launcher per node, which tasks_per_gpu 0 keeps the plugin
    from turning into --ntasks-per-gpu."""
    nodes = launch["nodes"]
    return {"nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "mpi": "srun"} if nodes > 1 else {}


def train_launcher(launch: dict, method: str, resources: Mapping, *, config_file, base_model: str, dtype: str,
                   server_log: str) -> list[str]:
    """The command prefix of a training job (the rule appends `train --spec ...`): `python -m scalpel`, `accelerate
    launch`, the several-node `scalpel launch slurm`, or any of them behind `scalpel vllm-server` (GRPO, server mode).
    """
    nodes = launch["nodes"]
    if nodes > 1:
        if resources.get("gpu"):
            raise ValueError(
                f"launch.nodes is {nodes}: ask for GPUs per node with the resource gres='gpu:N', not gpu=N"
                " (the Slurm executor makes gpu --gpus, a total over the job that Slurm may split unevenly)"
            )
        return ["python", "-m", "scalpel", "launch", "slurm", "--machines", str(nodes), "--config-file",
                str(config_file), "--cpu-processes", str(launch["deepspeed"]["cpu_processes"])]
    launcher = train_command(launch, train_processes(launch, method, resources), config_file)
    if vllm_serves(launch, method):
        launcher = ["python", "-m", "scalpel", "vllm-server", "--model", base_model, "--gpu-memory-utilization",
                    str(launch["vllm"]["gpu_memory_utilization"]), "--dtype", dtype, "--server-log", server_log,
                    "--", *launcher]
    return launcher


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("launch", help="the DeepSpeed launch files; a training launched over several nodes",
                              description=__doc__.split("\n\n")[0])
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    files = modes.add_parser("files", help=f"write {DS_CONFIG} and {ACCELERATE_CONFIG}, print the yaml's path")
    files.add_argument("--stage", type=int, choices=[2, 3], required=True, help="ZeRO stage")
    files.add_argument("--num-processes", type=int, required=True, help="processes in all (over every machine)")
    files.add_argument("--outdir", required=True, help=f"folder for {DS_CONFIG} and {ACCELERATE_CONFIG}")
    files.add_argument("--cpu", action="store_true", help="the run trains on CPU (gloo); TRL's use_cpu decides")
    files.add_argument("--bf16", action="store_true", help="bf16 mixed precision; must equal the run's TRL bf16")
    files.add_argument("--persistence-threshold", type=int, default=None,
                       help="ZeRO-3 stage3_param_persistence_threshold (default auto; 0 shards every parameter)")
    files.add_argument("--num-machines", type=int, default=1)
    files.add_argument("--machine-rank", type=int, default=0)
    files.add_argument("--main-process-ip", default=None)
    files.add_argument("--main-process-port", type=int, default=29500)
    for mode, help_ in [("slurm", "inside a Slurm job: srun one node launcher per machine"),
                        ("node", "one machine's accelerate launch (a task of the slurm mode's srun)")]:
        m = modes.add_parser(mode, help=help_)
        if mode == "slurm":
            m.add_argument("--machines", type=int, required=True, help="launch.nodes: one node launcher each")
        m.add_argument("--config-file", required=True, help="the accelerate yaml of write_launch_files")
        m.add_argument("--cpu-processes", type=int, required=True, help="processes per machine without GPUs")
        m.add_argument("command", nargs=argparse.REMAINDER, help="the scalpel command and its arguments")
    p.set_defaults(func=main)


def main(a) -> None:
    try:
        if a.mode == "files":
            print(write_launch_files(a.outdir, a.stage, a.num_processes, a.cpu, a.bf16, a.persistence_threshold,
                                     num_machines=a.num_machines, machine_rank=a.machine_rank,
                                     main_process_ip=a.main_process_ip, main_process_port=a.main_process_port))
            return
        if a.mode == "node":
            cmd, env = node_command(os.environ, a.config_file, a.cpu_processes) + a.command, dict(os.environ)
        else:
            node_args = ["--config-file", a.config_file, "--cpu-processes", str(a.cpu_processes), *a.command]
            cmd, env = srun_command(os.environ, a.machines, node_args)
    except ValueError as err:
        raise SystemExit(f"scalpel launch {a.mode}: error: {err}") from None
    print(" ".join(cmd), file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)

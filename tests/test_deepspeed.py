"""The DeepSpeed launch files, and one real ZeRO-3 run over gloo checked against a plain one-process run."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, write_tiny_study
from scalpel import cli

# ----------------------------------------------------------------------------------------------------------------
from scalpel.train import launch

# ----------------------------------------------------------------------------------------------------------------
# The config builders


def test_stage3_config():
    ds = launch.deepspeed_config(3, bf16=False, param_persistence_threshold=0)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["stage3_param_persistence_threshold"] == 0
    assert zero["offload_optimizer"] == {"device": "none"} and zero["offload_param"] == {"device": "none"}
    # The Trainer fills every batch-shaped value from the run's TRL arguments.
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto"
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert "optimizer" not in ds and "scheduler" not in ds  # TRL's optimizer and schedule, not DeepSpeed's
    json.dumps(ds)  # plain JSON


def test_stage3_threshold_defaults_to_auto_and_bf16_is_passed():
    ds = launch.deepspeed_config(3, bf16=True)
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == "auto"
    assert ds["bf16"] == {"enabled": True}


def test_stage2_differs_from_stage3():
    two = launch.deepspeed_config(2, bf16=False)
    three = launch.deepspeed_config(3, bf16=False)
    assert two["zero_optimization"]["stage"] == 2
    assert not [k for k in two["zero_optimization"] if k.startswith("stage3_") or k == "offload_param"]
    assert {k for k in two if k != "zero_optimization"} == {k for k in three if k != "zero_optimization"}
    with pytest.raises(ValueError, match="ZeRO-3"):
        launch.deepspeed_config(2, bf16=False, param_persistence_threshold=0)
    for stage in (0, 1, 4):
        with pytest.raises(ValueError, match="stage"):
            launch.deepspeed_config(stage, bf16=False)


def test_accelerate_config_single_machine(tmp_path):
    acc = launch.accelerate_config(tmp_path / "ds.json", num_processes=2, use_cpu=True)
    assert acc["distributed_type"] == "DEEPSPEED"
    assert acc["deepspeed_config"] == {"deepspeed_config_file": str((tmp_path / "ds.json").resolve()),
                                       "zero3_init_flag": True}
    assert (acc["num_processes"], acc["num_machines"], acc["machine_rank"]) == (2, 1, 0)
    assert acc["rdzv_backend"] == "static" and acc["use_cpu"] is True
    assert "main_process_ip" not in acc


def test_accelerate_config_multi_node(tmp_path):
    acc = launch.accelerate_config(tmp_path / "ds.json", num_processes=8, num_machines=2, machine_rank=1,
                                   main_process_ip="node01", main_process_port=29600)
    assert acc["rdzv_backend"] == "c10d" and acc["same_network"] is False
    assert acc["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    assert (acc["main_process_ip"], acc["main_process_port"], acc["machine_rank"]) == ("node01", 29600, 1)
    with pytest.raises(ValueError, match="main_process_ip"):
        launch.accelerate_config(tmp_path / "ds.json", num_processes=8, num_machines=2)
    with pytest.raises(ValueError, match="multiple"):
        launch.accelerate_config(tmp_path / "ds.json", num_processes=3, num_machines=2, main_process_ip="n")


@pytest.mark.parametrize("stage", [2, 3])
def test_written_yaml_leaves_the_json_keys_to_the_json(tmp_path, stage):
    path = launch.write_launch_files(tmp_path, stage, 2, use_cpu=True, bf16=False)
    assert path == tmp_path / "accelerate.yaml"
    acc = yaml.safe_load(path.read_text())
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert Path(acc["deepspeed_config"]["deepspeed_config_file"]) == (tmp_path / "ds_config.json").resolve()
    # accelerate raises when these sit beside a deepspeed_config_file.
    assert not set(launch.FORBIDDEN_WITH_FILE) & set(acc["deepspeed_config"])
    assert "mixed_precision" not in acc
    assert acc["deepspeed_config"]["zero3_init_flag"] is (stage == 3)  # accelerate ignores it, with a warning, for 2


def test_cli_writes_both_files(tmp_path, capsys):
    cli.main(["launch", "files", "--stage", "3", "--num-processes", "2", "--outdir", str(tmp_path), "--cpu",
                 "--persistence-threshold", "0"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "accelerate.yaml")
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert yaml.safe_load((tmp_path / "accelerate.yaml").read_text())["use_cpu"] is True
    with pytest.raises(SystemExit):
        cli.main(["launch", "files", "--stage", "2", "--num-processes", "2", "--outdir", str(tmp_path),
                  "--persistence-threshold", "0"])


def test_train_command():
    plain = {"deepspeed": {"enabled": False, "zero_stage": 3}}
    assert launch.train_command(plain, 1) == ["python", "-m", "scalpel"]
    with pytest.raises(ValueError, match="several processes"):
        launch.train_command(plain, 2)
    ds = {"deepspeed": {"enabled": True, "zero_stage": 3}}
    assert launch.train_command(ds, 2, "/x/accelerate.yaml") == [
        "accelerate", "launch", "--config_file", "/x/accelerate.yaml", "--num_processes", "2", "-m", "scalpel"]
    assert launch.train_command(ds, 8, "a.yaml", ["--machine_rank", 1])[-4:] == ["--machine_rank", "1", "-m",
                                                                                  "scalpel"]
    with pytest.raises(ValueError, match="accelerate config"):
        launch.train_command(ds, 2)


def test_train_launcher_of_each_job_shape():
    cfg = {"nodes": 1, "deepspeed": {"enabled": True, "cpu_processes": 2},
           "vllm": {"enabled": True, "mode": "server", "gpu_memory_utilization": 0.7}}
    files = dict(config_file="l.yaml", base_model="b", dtype="bfloat16", server_log="s.log")
    accelerate = lambda n: ["accelerate", "launch", "--config_file", "l.yaml", "--num_processes", n, "-m", "scalpel"]  # noqa: E731
    assert launch.train_launcher(cfg, "sft", {"gpu": 8}, **files) == accelerate("8")
    assert launch.train_launcher(cfg, "sft", {"gres": "gpu:h100:4"}, **files) == accelerate("4")
    assert launch.train_launcher(cfg, "sft", {}, **files) == accelerate("2")  # CPU job: launch.deepspeed.cpu_processes
    # GRPO in vLLM server mode: the last GPU serves, the others train.
    assert launch.train_launcher(cfg, "grpo", {"gpu": 8}, **files) == [
        "python", "-m", "scalpel", "vllm-server", "--model", "b", "--gpu-memory-utilization", "0.7", "--dtype",
        "bfloat16", "--server-log", "s.log", "--", *accelerate("7")]
    with pytest.raises(ValueError, match="2 or more GPUs"):
        launch.train_processes(cfg, "grpo", {"gpu": 1})
    plain = {**cfg, "deepspeed": {"enabled": False, "cpu_processes": 2}}
    assert launch.train_launcher(plain, "sft", {"gpu": 8}, **files) == ["python", "-m", "scalpel"]
    assert launch.train_processes(plain, "sft", {"gpu": 8}) == 1
    # Several nodes: one launcher per node through srun, GPUs asked per node (gres), never as a job total.
    nodes = {**cfg, "nodes": 2}
    assert launch.train_launcher(nodes, "sft", {"gres": "gpu:8"}, **files) == [
        "python", "-m", "scalpel", "launch", "slurm", "--machines", "2", "--config-file", "l.yaml",
        "--cpu-processes", "2"]
    with pytest.raises(ValueError, match="gres='gpu:N', not gpu=N"):
        launch.train_launcher(nodes, "sft", {"gpu": 8}, **files)
    assert launch.train_job_resources(nodes) == {"nodes": 2, "tasks": 2, "tasks_per_gpu": 0, "mpi": "srun"}
    assert launch.train_job_resources(cfg) == {}


# ----------------------------------------------------------------------------------------------------------------
# One real run: ZeRO-3 over gloo with 2 CPU processes against plain python with 1

GLOBAL_BATCH, STEPS = 4, 4
# Probe: the real `scalpel` CLI, plus a callback that records, on each rank after the first optimizer step, how many
# elements of each parameter that rank holds (ZeRO-3 keeps a 1/world_size slice in `ds_tensor`).
PROBE = '''
import json, os, sys
import torch.distributed as dist
from transformers import TrainerCallback
from scalpel import cli
from scalpel.train import trainer as train

class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            rank = int(os.environ.get("RANK", "0"))
            held = {n: [p.numel(), getattr(p, "ds_numel", None), getattr(getattr(p, "ds_tensor", None), "numel",
                        lambda: None)()] for n, p in model.named_parameters()}
            seen = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                    "distributed_type": str(args.distributed_state.distributed_type), "params": held}
            with open(os.path.join(os.environ["PROBE_OUT"], f"rank{rank}.json"), "w") as fh:
                json.dump(seen, fh)

build = train.build_trainer
def probed(*a, **k):
    trainer = build(*a, **k)
    trainer.add_callback(Probe())
    return trainer
train.build_trainer = probed
cli.main(sys.argv[1:])
'''


def _run(cmd, cwd, log, **extra_env):
    env = dict(os.environ, **extra_env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "workflow"), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=900)
    took = time.monotonic() - start
    text = Path(log).read_text()
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed after {took:.0f} s:\n{text[-6000:]}"
    return text, took


def train_args(spec_file, base, data, d) -> list[str]:
    """`train ...` as the training rules call it, after the launcher: training into `d/state`."""
    return [str(c) for c in ("train", "--spec", spec_file, "--base", base, "--data", data, "--state", d / "state")]


def publish_command(spec_file, d) -> list[str]:
    """The training rules' second command, once the launcher has exited 0: `d/state` into `d/checkpoints` and
    `d/log.json`."""
    return [str(c) for c in (sys.executable, "-m", "scalpel", "publish", "--spec", spec_file, "--state", d / "state",
                             "--checkpoints", d / "checkpoints", "--log-history", d / "log.json")]


def _weights(folder):
    from safetensors.torch import load_file
    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def sft_spec(per_device: int, deepspeed: bool) -> dict:
    """The run both sides train: with the same global batch (4 x 1 process = 2 x 2 processes) and seed hence the same
    shuffled order, accelerate hands each process alternate micro-batches of that order, so the 2 processes see
    exactly the examples of the 1. The loss is normalised by the tokens of the whole global batch
    (average_tokens_across_devices), no dropout."""
    from scalpel import config

    cfg = {"seed": 0, "model": {"dtype": "float32"},
           "train_defaults": {"sft": {
               "learning_rate": 1.0e-3, "lr_scheduler_type": "constant", "max_grad_norm": 1.0,
               "per_device_train_batch_size": per_device, "gradient_accumulation_steps": 1, "max_length": 256,
               "packing": False, "completion_only_loss": False, "logging_steps": 1, "bf16": False,
               "use_cpu": True, "gradient_checkpointing": False, "dataloader_num_workers": 0}},
           "runs": {"sft": {"method": "sft", "steps": STEPS, "checkpoints": 2}},
           "launch": {"deepspeed": {"enabled": deepspeed, "zero_stage": 3}}}
    return config.resolve_run(cfg, "sft")


def assert_same_training(base_dir: Path, plain_dir: Path, zero3_dir: Path) -> None:
    """The run in `zero3_dir` (ZeRO-3, several processes) trained as the plain one-process run in `plain_dir`."""
    # Tolerances. The runs are the same computation in a different float order (per-process padding and matmul
    # shapes, gloo's reduce-scatter of the gradients, a flat partitioned Adam state): measured, the losses agree to
    # 1e-7 relative, the gradient norms to 2e-7, the weights to 5e-6 of the update from the base (max 1.4e-6 on one
    # element, where Adam divides a ~1e-8 gradient by its own magnitude). Real bugs sit far above: a different data
    # order (seed 1) moves the weights by 0.3-0.37 of the update; averaging per-process token means instead of the
    # global one (average_tokens_across_devices false) by 7e-3-1.1e-2 of the update, max 1.9e-3 on an element, and the
    # gradient norms by 1e-4. Each bound sits between the two, with a margin of 7x or more on each side.
    import torch

    hist = {n: [h for h in json.loads((d / "log.json").read_text()) if "loss" in h]
            for n, d in (("plain", plain_dir), ("zero3", zero3_dir))}
    assert [h["step"] for h in hist["plain"]] == [h["step"] for h in hist["zero3"]] == list(range(1, STEPS + 1))
    for a, b in zip(hist["plain"], hist["zero3"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a, b)

    base = _weights(base_dir)
    for step in (2, 4):
        plain = _weights(plain_dir / f"checkpoints/step-{step}")
        zero3 = _weights(zero3_dir / f"checkpoints/step-{step}")
        # Gathered, full-shape, fp32 weights of every parameter.
        assert zero3.keys() == plain.keys() == base.keys()
        for name, t in zero3.items():
            assert t.shape == base[name].shape and t.dtype == torch.float32, name
        # The difference of the runs must be tiny beside the update each made (tolerances above).
        update = torch.cat([(plain[n] - base[n]).flatten() for n in base]).norm()
        diff = torch.cat([(plain[n] - zero3[n]).flatten() for n in base]).norm()
        worst = max((plain[n] - zero3[n]).abs().max().item() for n in base)
        print(f"step {step}: |update| {update:.4g}, |zero3 - plain| {diff:.3g} ({diff / update:.2e} of the update), "
              f"max |diff| {worst:.3g}")
        assert update > 0.1, "training did not move the weights"
        assert diff <= 1e-3 * update
        assert worst <= 1e-4  # a tenth of one step's learning rate


@pytest.mark.integration
def test_zero3_two_processes_match_one_process(tmp_path):
    from scalpel.io import write_yaml

    write_tiny_study(tmp_path)

    runs = {}
    for name, nproc in (("plain", 1), ("zero3", 2)):
        d = tmp_path / name
        d.mkdir()
        s = sft_spec(GLOBAL_BATCH // nproc, nproc > 1)
        write_yaml(s, d / "spec.yaml")
        files, probe_env = None, {}
        if nproc > 1:
            files = launch.write_launch_files(d / "launch", 3, nproc, use_cpu=True, bf16=False, threshold=0,
                                              main_process_port=0)
        prefix = launch.train_command(s["launch"], nproc, files)
        if nproc > 1:  # the same command, with the probe script standing in for `-m scalpel`
            assert prefix[-2:] == ["-m", "scalpel"]
            (d / "probe").mkdir()
            (d / "probe.py").write_text(PROBE)
            prefix = [*prefix[:-2], str(d / "probe.py")]
            probe_env["PROBE_OUT"] = str(d / "probe")
        cmd = [*map(str, prefix), *train_args(d / "spec.yaml", tmp_path / "base", tmp_path / "sft.jsonl", d)]
        text, took = _run(cmd, tmp_path, d / "train.log", **probe_env)
        _run(publish_command(d / "spec.yaml", d), tmp_path, d / "publish.log")
        runs[name] = {"dir": d, "log": text, "seconds": took, "steps": s["checkpoint_steps"]}
        print(f"{name}: {nproc} process(es), {took:.1f} s")
    assert runs["plain"]["steps"] == runs["zero3"]["steps"] == [2, 4]

    # It really was ZeRO-3 over gloo on 2 processes, with every parameter sharded.
    assert "deepspeed_shm_comm_op" in runs["zero3"]["log"]  # DeepSpeed's CPU communication op was loaded
    for rank in (0, 1):
        seen = json.loads((runs["zero3"]["dir"] / f"probe/rank{rank}.json").read_text())
        assert (seen["backend"], seen["world_size"], seen["distributed_type"]) == (
            "gloo", 2, "DistributedType.DEEPSPEED")
        held = seen["params"]
        assert len(held) == 25, f"rank {rank} recorded {len(held)} parameters"
        for name, (local, full, shard) in held.items():
            assert local == 0, f"rank {rank} holds all of {name} outside forward: not partitioned"
            assert full > 0 and shard == -(-full // 2), f"rank {rank}: {name} shard {shard} of {full}"

    assert_same_training(tmp_path / "base", runs["plain"]["dir"], runs["zero3"]["dir"])


@pytest.mark.integration
def test_stress_script_smallest_case(tmp_path):
    """tests/stress/stress_zero3.py -n 1 without burners: the launcher exits 0 (so every rank did), both ranks log
    their end, the state is stamped finished before publishing, and the published checkpoints are those of a plain
    one-process run of the same training."""
    import importlib.util

    from scalpel.io import write_yaml

    path = ROOT / "tests/stress/stress_zero3.py"
    spec_ = importlib.util.spec_from_file_location("stress_zero3", path)
    stress = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(stress)
    work = tmp_path / "stress"
    [result] = stress.main(["-n", "1", "--burners", "0", "--workdir", str(work)])
    assert (result["passed"], result["why"], result["returncode"], result["stamped"]) == (True, "ok", 0, True)
    assert result["max_diff"] == 0.0

    plain = tmp_path / "plain"
    plain.mkdir()
    s = sft_spec(GLOBAL_BATCH, False)
    write_yaml(s, plain / "spec.yaml")
    cmd = [*launch.train_command(s["launch"]), *train_args(plain / "spec.yaml", work / "base", work / "sft.jsonl",
                                                           plain)]
    _run(cmd, tmp_path, plain / "train.log")
    _run(publish_command(plain / "spec.yaml", plain), tmp_path, plain / "publish.log")
    assert_same_training(work / "base", plain, work / "run00")

"""A SIGTERM that Slurm delivers to a training job (as `--signal=TERM@N` does, to the job steps) reaches training
through the Slurm executor's job step: training saves and stops, and the Snakemake rerun resumes to the weights of an
uninterrupted run. Real Slurm (the local cluster), real Snakemake, accelerate and DeepSpeed (2 processes over gloo)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT
from scalpel.train import launch
from test_deepspeed import _run, _weights, publish_command, train_args
from test_slurm import SMOKE, TEST_PROFILE, cancel_jobs_of, cluster, sacct, snakemake  # noqa: F401 (fixture)

STEPS, CHECKPOINTS = 24, 4  # a checkpoint every 6 steps; the signal follows the first, so 18 steps remain to stop in


def _config(workdir):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["model"]["build"]["pretrain_steps"] = 20  # only its inputs matter here, not its quality
    cfg["runs"] = {"sft": {"method": "sft", "steps": STEPS, "checkpoints": CHECKPOINTS}}
    cfg["launch"] = {"deepspeed": {"enabled": True, "zero_stage": 3, "param_persistence_threshold": 0}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_job(workdir) -> str | None:
    for line in subprocess.run(["squeue", "-h", "-o", "%i|%Z|%k"], capture_output=True, text=True).stdout.split():
        job, jobdir, comment = line.split("|")
        if jobdir == str(workdir) and comment.startswith("rule_train_sft"):
            return job
    return None


@pytest.mark.slurm
@pytest.mark.integration
def test_slurm_signal_saves_training_and_the_rerun_resumes(cluster, tmp_path):  # noqa: F811
    workdir, final = tmp_path / "wd", "results/runs/sft/trainer_log.json"
    workdir.mkdir()
    common = ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(_config(workdir))]
    # Data, base model and launch files where this runs; only training goes through Slurm.
    proc, _ = snakemake(workdir, *common, "--cores", "2", "--until", "base_model", "launch_files", "run_spec",
                        bound=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = workdir / "results/runs/sft/state"

    # Run 1: Slurm signals the job's steps once the first checkpoint is exported.
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    cmd = ["timeout", "-s", "KILL", "600", sys.executable, "-m", "snakemake", "--directory", str(workdir), *common,
           "--profile", str(TEST_PROFILE), final]
    with open(workdir / "first.log", "w") as out:
        first = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (state / "exports/step-6").is_dir():
                assert first.poll() is None and time.monotonic() < deadline, (workdir / "first.log").read_text()[-3000:]
                time.sleep(0.05)
            job = _train_job(workdir)
            assert job, "the training job is not in squeue"
            subprocess.run(["scancel", f"--signal={signal.SIGTERM.name.removeprefix('SIG')}", job], check=True)
            assert first.wait(timeout=300) == 1, (workdir / "first.log").read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                cancel_jobs_of(workdir)
    train_log = (workdir / "logs/train/sft.log").read_text()
    # Both processes got the signal (from Slurm, and again from torchrun's agent) and stopped at the same step.
    assert train_log.count("received signal 15") >= 2, train_log[-3000:]
    assert "Received 15 death signal" in train_log  # torchrun's agent, which forwards it, got it too
    stops = {line.split("stopped at step ")[1].split()[0]
             for line in train_log.splitlines() if "stopped at step" in line}
    assert len(stops) == 1, stops
    saved = int(stops.pop())
    assert 6 <= saved < STEPS and (state / f"checkpoint-{saved}/trainer_state.json").is_file()
    assert not (workdir / "results/runs/sft/checkpoints").exists()
    assert [j["State"] for j in sacct("-X", "-j", job)] == ["FAILED"]

    # Run 2: the rerun resumes from that checkpoint and finishes.
    proc, _ = snakemake(workdir, *common, "--profile", str(TEST_PROFILE), final, bound=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from results/runs/sft/state/checkpoint-{saved}" in (workdir / "logs/train/sft.log").read_text()

    # The uninterrupted run: the same launcher and inputs, here.
    prefix = launch.train_command({"deepspeed": {"enabled": True}}, 2, workdir / "results/launch/accelerate.yaml")
    ref = tmp_path / "straight"
    spec = "results/runs/sft/spec.yaml"
    _run([*map(str, prefix), *train_args(spec, "results/models/base", "results/data/sft.jsonl", ref)], workdir,
         tmp_path / "straight.log")
    _run(publish_command(spec, ref), workdir, tmp_path / "publish.log")
    for step in (6, 12, 18, 24):
        straight = _weights(ref / f"checkpoints/step-{step}")
        resumed = _weights(workdir / f"results/runs/sft/checkpoints/step-{step}")
        worst = max((resumed[name] - tensor).abs().max().item() for name, tensor in straight.items())
        print(f"step {step}: max |resumed - straight| {worst:.3g}")
        assert worst <= 1e-6, step

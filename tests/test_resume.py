"""A training job stopped by SIGTERM saves, and its rerun resumes and ends where an uninterrupted run ends."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, write_tiny_study
from scalpel import config
from scalpel.io import write_yaml
from test_deepspeed import _run, _weights, publish_command, train_args

STEPS, CHECKPOINTS = 12, 6


def _spec(tmp_path):
    cfg = {"seed": 0, "model": {"dtype": "float32"},
           "train_defaults": {"sft": {
               "learning_rate": 1.0e-3, "lr_scheduler_type": "cosine", "per_device_train_batch_size": 4,
               "max_length": 256, "completion_only_loss": False, "logging_steps": 1, "bf16": False,
               "use_cpu": True, "gradient_checkpointing": False, "dataloader_num_workers": 0}},
           "runs": {"sft": {"method": "sft", "steps": STEPS, "checkpoints": CHECKPOINTS}}}
    spec = config.resolve_run(cfg, "sft")
    write_yaml(spec, tmp_path / "spec.yaml")
    return spec


def _cmd(tmp_path, name):
    return [sys.executable, "-m", "scalpel",
            *train_args(tmp_path / "spec.yaml", tmp_path / "base", tmp_path / "sft.jsonl", tmp_path / name)]


@pytest.mark.integration
def test_sigterm_then_rerun_resumes_to_the_same_weights(tmp_path):
    write_tiny_study(tmp_path)
    spec = _spec(tmp_path)
    assert spec["checkpoint_steps"] == [2, 4, 6, 8, 10, 12]

    _run(_cmd(tmp_path, "straight"), tmp_path, tmp_path / "straight.log")
    _run(publish_command(tmp_path / "spec.yaml", tmp_path / "straight"), tmp_path, tmp_path / "publish.log")

    # Interrupted: SIGTERM once the step-4 checkpoint is exported.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"), OMP_NUM_THREADS="1")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_cmd(tmp_path, "resumed"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (tmp_path / "resumed/state/exports/step-4").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    first = (tmp_path / "first.log").read_text()
    assert "stopped at step" in first and "rerun to resume" in first
    state = tmp_path / "resumed/state"
    saved = sorted(int(p.name.split("-")[1]) for p in state.glob("checkpoint-*"))
    assert saved and 4 <= saved[-1] < STEPS
    assert not (tmp_path / "resumed/checkpoints").exists()  # only a finished run publishes its checkpoints
    assert not (state / "finished").exists()

    text, _ = _run(_cmd(tmp_path, "resumed"), tmp_path, tmp_path / "second.log")
    _run(publish_command(tmp_path / "spec.yaml", tmp_path / "resumed"), tmp_path, tmp_path / "publish.log")
    assert f"resuming from {state / f'checkpoint-{saved[-1]}'}" in text
    for step in spec["checkpoint_steps"]:
        straight = _weights(tmp_path / f"straight/checkpoints/step-{step}")
        resumed = _weights(tmp_path / f"resumed/checkpoints/step-{step}")
        # Same data order and RNG state after resuming: the same computation, so equal up to float noise.
        for name, tensor in straight.items():
            assert (resumed[name] - tensor).abs().max().item() <= 1e-6, (step, name)

"""Faults injected at every phase of a study's jobs (scalpel/faults.py): real SIGKILLs of the whole job, a rank that
aborts at exit, a full disk, corrupt weights. Through real Snakemake, accelerate and DeepSpeed (ZeRO-3, 2 processes
over gloo), each ends with the checkpoints of an uninterrupted run and no partial file that a later rule reads."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, write_tiny_study
from scalpel import faults
from test_deepspeed import _weights
from test_workflow import SMOKE

RUNS = ("straight", "crash", "node_loss", "save_kill", "publish_kill", "disk_full")
STEPS = (2, 4)


def _config(workdir: Path) -> Path:
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["model"]["build"]["pretrain_steps"] = 20  # only its inputs matter here, not its quality
    cfg["runs"] = {name: {"method": "sft", "steps": 4, "checkpoints": 2} for name in RUNS}
    cfg["launch"] = {"deepspeed": {"enabled": True, "zero_stage": 3, "param_persistence_threshold": 0}}
    cfg["eval"]["limit"] = 2
    cfg["report"] = {"authors": {}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """Snakemake in `workdir`; with `fault`, SCALPEL_FAULT for its jobs, and this Snakemake (pid $$ of the shell it
    replaces) as the job that a `kill` fault kills, with all its descendants. No lock: a killed Snakemake leaves its
    lock, which `--unlock` would clear (another start of Snakemake)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop(faults.VARIABLE, None)
    if fault:
        env[faults.VARIABLE] = fault
    cmd = ["bash", "-c", f'export {faults.ROOT_VARIABLE}=$$; exec "$@"', "job", sys.executable, "-m", "snakemake",
           "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile",
           str(workdir / "config.yaml"), "--cores", "2", "--nolock", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    with open(workdir / "snakemake.log", "a") as fh:
        fh.write(f"\n$ {fault or ''} {' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def ok(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = snakemake(workdir, *args)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def killed(workdir: Path, target: str, fault: str) -> None:
    """Run `target` with a `kill` fault: Snakemake and its jobs die together, as in a node loss."""
    proc = snakemake(workdir, target, fault=fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-5000:]


def planned(workdir: Path, target: str) -> dict[str, int]:
    """The job counts of a dry run for `target` (Snakemake's 'Job stats' table)."""
    out = ok(workdir, "-n", target).stdout
    rows = out.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return {rule: int(n) for rule, n in (row.split() for row in rows)}


def trained(run: str) -> str:
    return f"results/runs/{run}/trainer_log.json"


def train_log(workdir: Path, run: str) -> str:
    return (workdir / f"logs/train/{run}.log").read_text()


def losses(workdir: Path, run: str) -> dict[int, float]:
    history = json.loads((workdir / trained(run)).read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_like_straight(workdir: Path, run: str) -> None:
    """`run` published the checkpoints and log history of the uninterrupted run, and its state is gone."""
    for step in STEPS:
        straight = _weights(workdir / f"results/runs/straight/checkpoints/step-{step}")
        got = _weights(workdir / f"results/runs/{run}/checkpoints/step-{step}")
        assert got.keys() == straight.keys()
        worst = max((got[name] - tensor).abs().max().item() for name, tensor in straight.items())
        assert worst <= 1e-6, (run, step, worst)
    ref, mine = losses(workdir, "straight"), losses(workdir, run)
    assert sorted(mine) == [1, 2, 3, 4]
    assert mine == pytest.approx(ref, rel=1e-6)
    state = workdir / f"results/runs/{run}/state"
    assert not state.exists() or not any(state.iterdir())  # a mount point stays, empty


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Data, base model, specs and launch files, and the uninterrupted run `straight`, published."""
    workdir = tmp_path_factory.mktemp("faults")
    _config(workdir)
    ok(workdir, trained("straight"))
    assert sorted(losses(workdir, "straight")) == [1, 2, 3, 4]
    assert not (workdir / "results/runs/straight/state").exists()
    return workdir


@pytest.mark.integration
def test_a_rank_aborting_at_exit_loses_no_finished_training(study):
    proc = snakemake(study, trained("crash"), fault="abort:exit-rank-1")
    assert proc.returncode == 1 and "SIGABRT" in train_log(study, "crash")
    # Snakemake deleted the failed job's outputs, but the finished training is whole in its state folder.
    assert not (study / "results/runs/crash/checkpoints").exists()
    state = study / "results/runs/crash/state"
    assert (state / "finished").is_file() and sorted(p.name for p in (state / "exports").iterdir()) == ["step-2",
                                                                                                        "step-4"]
    assert "training of run crash finished" in train_log(study, "crash")
    ok(study, trained("crash"))
    log = train_log(study, "crash")
    assert "finished training already" in log and "'loss'" not in log  # published, not trained again
    assert_like_straight(study, "crash")


@pytest.mark.integration
def test_a_node_lost_mid_training_resumes_from_the_newest_complete_checkpoint(study):
    killed(study, trained("node_loss"), "kill:step-3")
    state = study / "results/runs/node_loss/state"
    assert sorted(p.name for p in state.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (study / "results/runs/node_loss/checkpoints").exists()
    ok(study, trained("node_loss"))
    assert "resuming from results/runs/node_loss/state/checkpoint-2" in train_log(study, "node_loss")
    assert_like_straight(study, "node_loss")


@pytest.mark.integration
def test_a_kill_while_saving_resumes_from_the_previous_checkpoint(study):
    killed(study, trained("save_kill"), "kill:save-4")
    state = study / "results/runs/save_kill/state"
    assert (state / "checkpoint-4").is_dir() and not (state / "checkpoint-4/trainer_state.json").exists()
    ok(study, trained("save_kill"))
    log = train_log(study, "save_kill")
    assert "resuming from results/runs/save_kill/state/checkpoint-2" in log
    assert_like_straight(study, "save_kill")
    assert "deleting results/runs/save_kill/state/checkpoint-4, cut off while saving" in log  # before training


@pytest.mark.integration
def test_a_kill_while_publishing_republishes_without_training(study):
    killed(study, trained("publish_kill"), "kill:publish")
    out = study / "results/runs/publish_kill/checkpoints"
    assert sorted(p.name for p in out.iterdir()) == ["step-2"]  # cut off: step-4 not yet published
    ok(study, "--rerun-incomplete", trained("publish_kill"))  # as profiles/local does
    log = train_log(study, "publish_kill")
    assert "finished training already" in log and "'loss'" not in log
    assert_like_straight(study, "publish_kill")


@pytest.mark.integration
def test_a_full_disk_while_saving_fails_clearly_and_the_rerun_resumes(study):
    state = study / "results/runs/disk_full/state"
    state.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(state)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"a small tmpfs as the state folder needs root: {mount.stderr.strip()}")
    try:
        proc = snakemake(study, trained("disk_full"), fault="fill:save-4")
        assert proc.returncode == 1
        log = train_log(study, "disk_full")
        assert "no space left on the disk of results/runs/disk_full/state after step 4" in log, log[-5000:]
        assert "the newest complete checkpoint, results/runs/disk_full/state/checkpoint-2, is intact" in log
        assert json.loads((state / "checkpoint-2/trainer_state.json").read_text())["global_step"] == 2
        assert (state / "exports/step-2/model.safetensors").is_file()
        (state / faults.BALLAST).unlink()  # space is back
        ok(study, trained("disk_full"))
        assert "resuming from results/runs/disk_full/state/checkpoint-2" in train_log(study, "disk_full")
        assert_like_straight(study, "disk_full")
    finally:
        subprocess.run(["umount", str(state)])


@pytest.mark.integration
def test_a_diff_killed_while_writing_its_table_leaves_none_and_reruns_alone(study):
    target = "results/diff/straight/step-2.parquet"
    out = study / target
    ok(study, "results/weights/update/straight/step-2.parquet")  # diff's input, a file of the same name: made first
    killed(study, target, f"kill:write:{out.name}")
    assert not out.exists()
    assert planned(study, target) == {"diff": 1, "total": 1}
    ok(study, target)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial file left beside it
    table = pd.read_parquet(out)
    assert set(table.run) == {"straight"} and set(table.step) == {2}
    assert len(table) == 4 * 7 and (table.rel_update > 0).all()  # layers x modules, all trained


# Corrupt weights: every reader stops, naming the file, and writes nothing ---------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_study(folder)
    return folder


def _corrupt(models: Path, tmp_path: Path, how: str) -> Path:
    ckpt = tmp_path / "step-2"
    shutil.copytree(models / "base", ckpt)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:  # the header's JSON garbled
        weights.write_bytes(data[:8] + b"#" * 16 + data[24:])
    return weights


@pytest.mark.parametrize("how", ["truncated", "garbled"])
@pytest.mark.parametrize("stage", ["diff", "kl", "evaluate"])
def test_corrupt_weights_stop_every_reader_naming_the_file(models, tmp_path, stage, how):
    from scalpel import cli
    from scalpel.io import read_jsonl

    weights = _corrupt(models, tmp_path, how)
    ckpt, out = str(weights.parent), tmp_path / "out" / "step-2.result"
    base, reference = str(models / "base"), str(models / "sft.jsonl")
    args = {"diff": ["diff", "--base", base, "--checkpoint", ckpt],
            "kl": ["kl", "--base", base, "--checkpoint", ckpt, "--reference", reference],
            "evaluate": ["evaluate", "--checkpoint", ckpt, "--tasks", "mini_math_l1"]}[stage]
    assert read_jsonl(reference)  # KL would read it: the weights alone are at fault
    with pytest.raises(ValueError) as err:
        cli.main([*args, "--run", "sft", "--step", "2", "--out", str(out)])
    assert str(err.value).startswith(f"{weights}: unreadable safetensors file"), err.value
    assert not out.parent.exists() or not any(out.parent.iterdir())

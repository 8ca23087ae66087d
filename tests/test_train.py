from pathlib import Path

import pytest
from scalpel.train import trainer as train


def _fake_checkpoint(path: Path, complete: bool = True):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "config.json").write_text("{}")
    (path / "optimizer.pt").write_bytes(b"state")
    if complete:
        (path / "trainer_state.json").write_text("{}")


def test_export_copies_only_model_files(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-3")
    train.export_checkpoint(tmp_path / "checkpoint-3", tmp_path / "out/step-3")
    assert sorted(p.name for p in (tmp_path / "out/step-3").iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "out/step-3.tmp").exists()


def test_export_refuses_a_checkpoint_without_weights(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(FileNotFoundError, match="no safetensors"):
        train.export_checkpoint(tmp_path / "checkpoint-1", tmp_path / "out/step-1")


def test_resume_from_newest_complete_checkpoint(tmp_path):
    spec = {"name": "sft", "steps": 8}
    state = tmp_path / "state"
    assert train.prepare_state_dir(state, spec) is None
    _fake_checkpoint(state / "checkpoint-2")
    _fake_checkpoint(state / "checkpoint-4")
    assert train.prepare_state_dir(state, spec) == str(state / "checkpoint-4")
    _fake_checkpoint(state / "checkpoint-6", complete=False)  # killed while saving
    assert train.prepare_state_dir(state, spec) == str(state / "checkpoint-4")


def test_state_of_another_spec_is_discarded(tmp_path):
    state = tmp_path / "state"
    train.prepare_state_dir(state, {"steps": 8})
    _fake_checkpoint(state / "checkpoint-4")
    assert train.prepare_state_dir(state, {"steps": 9}) is None
    assert not (state / "checkpoint-4").exists()


def _stop_worker(rank: int, init_file: str, out: str) -> None:
    """One rank of a 2-process gloo group: steps 1-6 of StopOnSignal; only rank 1 gets SIGTERM, before step 3 ends."""
    import json
    import os
    import signal
    from types import SimpleNamespace

    import torch.distributed as dist
    from transformers import TrainerControl

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    stopper = train.StopOnSignal()
    stopped_at = None
    for step in range(1, 7):
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        control = stopper.on_step_end(None, SimpleNamespace(global_step=step), TrainerControl())
        if control.should_training_stop:
            stopped_at = step
            assert control.should_save
            break
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"received": stopper.received, "stopped_by": stopper.stopped_by, "stopped_at": stopped_at}))
    dist.destroy_process_group()


def test_stop_signal_of_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    import json
    import signal

    import torch.multiprocessing as mp

    mp.spawn(_stop_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["received"] is None and ranks[1]["received"] == signal.SIGTERM
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == 3
    assert ranks[0]["stopped_by"] == ranks[1]["stopped_by"] == signal.SIGTERM


def test_stop_signal_without_a_process_group_is_the_own_flag():
    import os
    import signal
    from types import SimpleNamespace

    from transformers import TrainerControl

    previous = signal.getsignal(signal.SIGTERM)
    try:
        stopper = train.StopOnSignal()
        state = SimpleNamespace(global_step=1)
        assert not stopper.on_step_end(None, state, TrainerControl()).should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)
        control = stopper.on_step_end(None, state, TrainerControl())
        assert control.should_training_stop and control.should_save and stopper.stopped_by == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_run_log_names_what_trains(tmp_path, caplog):
    """build_trainer logs the trainable tensors (count, parameter total, names) before training starts."""
    import logging

    from conftest import write_tiny_study
    from scalpel import config

    write_tiny_study(tmp_path)
    cfg = {"runs": {"qk": {"method": "sft", "steps": 2, "checkpoints": 1,
                           "train_only": ["*.q_proj.*", "*.k_proj.*", "lm_head.weight"]}},
           "train_defaults": {"sft": {"use_cpu": True, "bf16": False, "max_length": 64,
                                      "per_device_train_batch_size": 2, "completion_only_loss": False}}}
    spec = config.resolve_run(cfg, "qk")
    with caplog.at_level(logging.INFO, logger="scalpel.train.trainer"):
        trainer = train.build_trainer(spec, str(tmp_path / "base"), str(tmp_path / "sft.jsonl"), tmp_path / "state")
    lines = next(r.getMessage() for r in caplog.records if "trainable:" in r.getMessage()).splitlines()
    model = trainer.model
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(expected) == 2 * 2 + 1  # q and k of the 2 layers, and the untied head
    total = sum(p.numel() for p in model.parameters())
    chosen = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lines[0] == (f"run qk: trainable: 5 of {len(list(model.parameters()))} parameter tensors, "
                        f"{chosen:,} of {total:,} parameters ({100 * chosen / total:.2f}%)")
    assert [line.split()[0] for line in lines[1:]] == expected
    assert "lm_head.weight" in expected and "model.embed_tokens.weight" not in expected


def test_a_checkpoint_cut_off_while_writing_its_trainer_state_is_not_resumed_from(tmp_path):
    spec = {"name": "sft", "steps": 8}
    state = tmp_path / "state"
    train.prepare_state_dir(state, spec)
    _fake_checkpoint(state / "checkpoint-2")
    _fake_checkpoint(state / "checkpoint-4")
    (state / "checkpoint-4/trainer_state.json").write_text('{"global_step": 4, "log_hist')  # a kill or a full disk
    (state / "exports/step-4.tmp").mkdir(parents=True)  # an export cut off
    assert train.prepare_state_dir(state, spec) == str(state / "checkpoint-2")
    assert not (state / "checkpoint-4").exists() and not (state / "exports/step-4.tmp").exists()


def test_disk_full_errors_are_recognised_and_others_are_not(tmp_path):
    import errno

    state = tmp_path / "state"
    _fake_checkpoint(state / "checkpoint-2")
    full = train.disk_full_error(OSError(errno.ENOSPC, "No space left on device"), state, 4)
    assert full.errno == errno.ENOSPC
    assert str(full).startswith(f"[Errno 28] no space left on the disk of {state} after step 4")
    assert f"the newest complete checkpoint, {state / 'checkpoint-2'}, is intact" in str(full)
    try:  # safetensors: its own error type, the cause in the message
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    except RuntimeError as err:
        assert train.disk_full_error(err, state, 4) is not None
    assert train.disk_full_error(ValueError("a bug"), state, 4) is None
    assert train.disk_full_error(RuntimeError("file write failed"), state, 4) is None  # with space left


# A rank of `scalpel train` whose trainer is a stand-in: it joins a 2-process gloo group as accelerate would, and
# leaves behind what once turned a finished training into a failed job at interpreter teardown.
RANK = '''
import atexit, os, sys, threading, time
from pathlib import Path
from types import SimpleNamespace
import torch.distributed as dist
from scalpel import cli
from scalpel.train import publish
from scalpel.train import trainer as train

rank = int(os.environ["RANK"])

class Trainer:
    def __init__(self, spec, base, data_file, state_dir):
        dist.init_process_group("gloo", init_method="file://" + os.environ["INIT_FILE"], rank=rank, world_size=2)
        self.spec, self.state_dir = spec, Path(state_dir)
        self.args = SimpleNamespace(process_index=rank, world_size=2)
        self.state = SimpleNamespace(global_step=spec["steps"], log_history=[{"step": spec["steps"], "loss": 1.0}])
        self.callback_handler = SimpleNamespace(callbacks=[train.StopOnSignal()])

    def train(self, resume_from_checkpoint=None):
        for step in self.spec["checkpoint_steps"]:
            (self.state_dir / f"exports/step-{step}").mkdir(parents=True, exist_ok=True)
        print(f"metrics of rank {rank}")  # stdout into a file is block-buffered: lost unless flushed
        if rank == 1:  # as a C++ std::thread destroyed while joinable does at teardown (the rank of the report)
            atexit.register(os.abort)
        else:  # a non-daemon thread: interpreter exit waits for it
            threading.Thread(target=time.sleep, args=(3600,)).start()

def slow_stamp(*args):
    time.sleep(2)  # rank 1 must wait for the stamp (shutdown_ranks' collective) before it leaves
    stamp(*args)

stamp, train.mark_finished = train.mark_finished, slow_stamp
train.build_trainer = Trainer
cli.main(sys.argv[1:])
'''


def test_finished_ranks_exit_0_past_a_teardown_that_would_abort_or_hang(tmp_path):
    """Each rank ends with `exit_now` once the state is stamped and every rank passed the final collective: exit 0,
    logs and stdout flushed, even where interpreter teardown would abort (SIGABRT, rank 1) or wait for a thread
    forever (rank 0). Before exit_now: [-6 (rank 1), hang (rank 0)]."""
    import os
    import re
    import subprocess
    import sys
    from datetime import datetime

    from conftest import ROOT
    from scalpel.io import write_yaml
    from scalpel.train.publish import is_finished

    spec = {"name": "sft", "steps": 4, "checkpoint_steps": [2, 4]}
    write_yaml(spec, tmp_path / "spec.yaml")
    (tmp_path / "rank.py").write_text(RANK)
    cmd = [sys.executable, tmp_path / "rank.py", "train", "--spec", tmp_path / "spec.yaml", "--base", "unused",
           "--data", "unused", "--state", tmp_path / "state"]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", INIT_FILE=str(tmp_path / "init"),
                   PYTHONPATH=str(ROOT / "workflow"), OMP_NUM_THREADS="1")
        with open(tmp_path / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=120) for p in procs[::-1]][::-1]
    except subprocess.TimeoutExpired as err:
        codes = [p.poll() for p in procs]
        pytest.fail(f"a rank did not exit within {err.timeout} s: exit codes {codes}")
    finally:
        for p in procs:
            p.kill()
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], logs
    assert is_finished(tmp_path / "state", spec)
    for rank, text in enumerate(logs):
        assert f"metrics of rank {rank}" in text
        ended = re.search(rf"^(\S+ \S+) INFO scalpel.train.trainer: process {rank}: training of run sft finished",
                          text, re.M)
        assert ended, text
        # the rank logged its end (then left) only after rank 0 stamped the state
        stamped = (tmp_path / "state/finished").stat().st_mtime
        assert datetime.strptime(ended[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() >= stamped - 0.01, rank


def test_throughput_is_logged_per_step_with_the_tokens_of_each_batch(tmp_path):
    """Every example is the same conversation, so each step's tokens are known by hand: 2 per batch x its length."""
    import json

    from conftest import write_tiny_study
    from scalpel import config
    from scalpel.io import read_jsonl, write_jsonl

    write_tiny_study(tmp_path)
    write_jsonl([read_jsonl(tmp_path / "sft.jsonl")[0]] * 8, tmp_path / "same.jsonl")
    cfg = {"runs": {"sft": {"method": "sft", "steps": 3, "checkpoints": 1}},
           "train_defaults": {"sft": {"use_cpu": True, "bf16": False, "max_length": 64, "logging_steps": 1,
                                      "per_device_train_batch_size": 2, "completion_only_loss": False}}}
    spec = config.resolve_run(cfg, "sft")
    trainer = train.build_trainer(spec, str(tmp_path / "base"), str(tmp_path / "same.jsonl"), tmp_path / "state")
    trainer.train()
    steps = [e for e in trainer.state.log_history if "step_s" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    tokens = 2 * len(trainer.train_dataset[0]["input_ids"])
    for entry in steps:
        assert entry["batch"] == 2 and entry["steps_timed"] == 1 and entry["step_s"] > 0
        assert entry["tokens_per_s"] * entry["step_s"] == pytest.approx(tokens)
    assert steps[0]["setup_s"] > 0 and "setup_s" not in steps[1]
    assert steps[-1]["save_s"] > 0 and "save_s" not in steps[0]  # one checkpoint, at step 3
    json.dumps(trainer.state.log_history)  # what mark_finished writes

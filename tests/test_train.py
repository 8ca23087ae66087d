from pathlib import Path

import pytest

from scalpel import train


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

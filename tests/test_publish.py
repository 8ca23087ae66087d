"""Publishing a finished training: its state folder into the declared outputs, the state deleted last."""
import json

import pytest
import yaml
from scalpel.train import publish

SPEC = {"name": "sft", "steps": 4, "checkpoint_steps": [2, 4]}


def _finished_state(tmp_path, history=({"step": 4, "loss": 1.5},)):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    state = tmp_path / "state"
    for step in SPEC["checkpoint_steps"]:
        (state / f"exports/step-{step}").mkdir(parents=True)
        (state / f"exports/step-{step}/model.safetensors").write_bytes(bytes([step]) * 8)
        (state / f"exports/step-{step}/config.json").write_text("{}")
    (state / "completions").mkdir()
    (state / "completions/step-1.parquet").write_bytes(b"rows")
    (state / "checkpoint-4").mkdir()  # trainer state: not published
    publish.mark_finished(state, SPEC, list(history))
    return state


def test_publish_fills_the_outputs_then_deletes_the_state(tmp_path):
    state = _finished_state(tmp_path)
    out = tmp_path / "run"
    publish.publish(tmp_path / "spec.yaml", state, out / "checkpoints", out / "trainer_log.json", out / "completions")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (out / "checkpoints/step-4/model.safetensors").read_bytes() == bytes([4]) * 8
    assert sorted(p.name for p in (out / "checkpoints/step-2").iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "completions/step-1.parquet").read_bytes() == b"rows"
    assert json.loads((out / "trainer_log.json").read_text()) == [{"step": 4, "loss": 1.5}]
    assert not state.exists()


def test_publish_refuses_an_unfinished_training_and_writes_nothing(tmp_path):
    state = _finished_state(tmp_path)
    (state / publish.FINISHED).unlink()
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=f"{state}: no finished training of run sft to publish"):
        publish.publish(tmp_path / "spec.yaml", state, out / "checkpoints", out / "trainer_log.json")
    assert not out.exists() and (state / "exports/step-2/model.safetensors").is_file()


def test_a_finished_stamp_of_another_spec_is_not_finished(tmp_path):
    state = _finished_state(tmp_path)
    assert publish.is_finished(state, SPEC)
    assert not publish.is_finished(state, {**SPEC, "steps": 5})


def test_a_training_without_all_its_exports_is_not_stamped(tmp_path):
    state = tmp_path / "state"
    (state / "exports/step-2").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"without checkpoints for steps \[4\]"):
        publish.mark_finished(state, SPEC, [])
    assert not (state / publish.FINISHED).exists()


def test_publishing_again_after_a_cut_off_publish_replaces_the_partial_outputs(tmp_path):
    state = _finished_state(tmp_path)
    out = tmp_path / "run/checkpoints"
    (out / "step-2").mkdir(parents=True)
    (out / "step-2/model.safetensors").write_bytes(b"half")  # a publish killed mid-way, outside Snakemake
    (out / ".step-4.tmp").mkdir()
    publish.publish(tmp_path / "spec.yaml", state, out, tmp_path / "run/trainer_log.json")
    assert (out / "step-2/model.safetensors").read_bytes() == bytes([2]) * 8
    assert sorted(p.name for p in out.iterdir()) == ["step-2", "step-4"]

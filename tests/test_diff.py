import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from transformers import Olmo2Config, Olmo2ForCausalLM

from scalpel.diff import MODULES, main, relative_updates

LAYERS = 3
TOUCHED = {(1, "up_proj"), (2, "q_proj")}


def _tensor_name(layer: int, module: str) -> str:
    block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{module}.weight"


def _tiny_olmo2() -> Olmo2ForCausalLM:
    config = Olmo2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    return Olmo2ForCausalLM(config)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Base and checkpoint state dicts, each saved as one file and as shards."""
    torch.manual_seed(0)
    model = _tiny_olmo2()
    root = tmp_path_factory.mktemp("models")
    model.save_pretrained(root / "base")
    model.save_pretrained(root / "base_sharded", max_shard_size="20KB")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for layer, module in TOUCHED:
            w = model.get_parameter(_tensor_name(layer, module))
            w.add_(0.01 * torch.randn_like(w))
        model.model.norm.weight.mul_(2.0)
        model.model.layers[0].post_attention_layernorm.weight.add_(1.0)
        model.model.embed_tokens.weight.add_(1.0)
    model.save_pretrained(root / "ckpt")
    model.save_pretrained(root / "ckpt_sharded", max_shard_size="20KB")
    ckpt = {k: v.clone() for k, v in model.state_dict().items()}
    return root, base, ckpt


def _expected(base: dict, ckpt: dict, layer: int, module: str) -> float:
    name = _tensor_name(layer, module)
    b, c = base[name].double(), ckpt[name].double()
    return float(torch.linalg.norm(c - b) / torch.linalg.norm(b))


def _check(df: pd.DataFrame, base: dict, ckpt: dict) -> None:
    assert list(df.columns) == ["layer", "module", "rel_update", "delta_norm", "base_norm"]
    assert len(df) == LAYERS * len(MODULES)
    assert list(zip(df.layer, df.module)) == [(i, m) for i in range(LAYERS) for m in MODULES]
    for row in df.itertuples():
        if (row.layer, row.module) in TOUCHED:
            assert row.rel_update == pytest.approx(_expected(base, ckpt, row.layer, row.module), rel=1e-9)
            assert row.rel_update > 1e-3
        else:
            assert row.rel_update == 0.0 and row.delta_norm == 0.0
        assert row.base_norm == pytest.approx(float(torch.linalg.norm(base[_tensor_name(row.layer, row.module)].double())),
                                              rel=1e-9)


def test_single_file(models):
    root, base, ckpt = models
    _check(relative_updates(root / "base", root / "ckpt"), base, ckpt)


def test_sharded(models):
    root, base, ckpt = models
    index = json.loads((root / "ckpt_sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the fixture should have produced several shards"
    _check(relative_updates(root / "base_sharded", root / "ckpt_sharded"), base, ckpt)
    _check(relative_updates(root / "base", root / "ckpt_sharded"), base, ckpt)
    _check(relative_updates(root / "base_sharded", root / "ckpt"), base, ckpt)


def test_chunks_smaller_than_rows(models):
    root, base, ckpt = models
    # 16- and 32-row tensors in chunks of 3 rows: several chunks and a ragged last one.
    _check(relative_updates(root / "base", root / "ckpt", chunk_rows=3), base, ckpt)


def test_excluded_tensors_are_not_needed(models, tmp_path):
    """Norms, embeddings and lm_head are never read: a checkpoint without them (or with junk shapes) is fine."""
    root, base, ckpt = models
    kept = {k: v for k, v in ckpt.items() if "_proj." in k}
    kept["model.embed_tokens.weight"] = torch.zeros(3, 3)
    (tmp_path / "ckpt").mkdir()
    save_file(kept, tmp_path / "ckpt" / "model.safetensors")
    _check(relative_updates(root / "base", tmp_path / "ckpt"), base, ckpt)


def test_missing_tensor(models, tmp_path):
    root, base, ckpt = models
    missing = _tensor_name(2, "down_proj")
    (tmp_path / "ckpt").mkdir()
    save_file({k: v for k, v in ckpt.items() if k != missing}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{missing}.*base.*base/model.safetensors.*checkpoint.*ckpt/model.safetensors"):
        relative_updates(root / "base", tmp_path / "ckpt")


def test_shape_mismatch(models, tmp_path):
    root, base, ckpt = models
    wrong = _tensor_name(0, "k_proj")
    (tmp_path / "ckpt").mkdir()
    save_file({**ckpt, wrong: torch.zeros(8, 16)}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{wrong}.*\[16, 16\].*base/model.safetensors.*\[8, 16\].*ckpt/model.safetensors"):
        relative_updates(root / "base", tmp_path / "ckpt")


def test_cli_writes_parquet(models, tmp_path):
    root, base, ckpt = models
    out = tmp_path / "diff" / "run_a" / "step_7.parquet"
    main(["--base", str(root / "base"), "--checkpoint", str(root / "ckpt_sharded"),
          "--run", "run_a", "--step", "7", "--out", str(out)])
    df = pd.read_parquet(out)
    assert list(df.columns[:2]) == ["run", "step"]
    assert set(df.run) == {"run_a"} and set(df.step) == {7}
    _check(df.drop(columns=["run", "step"]), base, ckpt)
    assert [p.name for p in out.parent.iterdir()] == [out.name]

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from scalpel import cli
from scalpel.analysis.diff import MODULES, relative_updates
from transformers import Olmo2Config, Olmo2ForCausalLM

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
    assert list(df.columns) == ["layer", "module", "rel_update", "delta_norm", "base_norm", "dtype", "reference_dtype"]
    assert set(df.dtype) == set(df.reference_dtype) == {"float32"}
    assert len(df) == LAYERS * len(MODULES)
    assert list(zip(df.layer, df.module)) == [(i, m) for i in range(LAYERS) for m in MODULES]
    for row in df.itertuples():
        if (row.layer, row.module) in TOUCHED:
            assert row.rel_update == pytest.approx(_expected(base, ckpt, row.layer, row.module), rel=1e-9)
            assert row.rel_update > 1e-3
        else:
            assert row.rel_update == 0.0 and row.delta_norm == 0.0
        name = _tensor_name(row.layer, row.module)
        assert row.base_norm == pytest.approx(float(torch.linalg.norm(base[name].double())),
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
    # 16- and 32-column float32 rows in chunks of 200 bytes: several chunks a tensor, on two threads.
    _check(relative_updates(root / "base", root / "ckpt", chunk_bytes=200, threads=2), base, ckpt)


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
    with pytest.raises(ValueError,
                       match=rf"{missing}.*base.*base/model.safetensors.*checkpoint.*ckpt/model.safetensors"):
        relative_updates(root / "base", tmp_path / "ckpt")


def test_shape_mismatch(models, tmp_path):
    root, base, ckpt = models
    wrong = _tensor_name(0, "k_proj")
    (tmp_path / "ckpt").mkdir()
    save_file({**ckpt, wrong: torch.zeros(8, 16)}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError,
                       match=rf"{wrong}.*\[16, 16\].*base/model.safetensors.*\[8, 16\].*ckpt/model.safetensors"):
        relative_updates(root / "base", tmp_path / "ckpt")


def test_cli_writes_parquet(models, tmp_path):
    root, base, ckpt = models
    out = tmp_path / "diff" / "run_a" / "step_7.parquet"
    cli.main(["diff", "--base", str(root / "base"), "--checkpoint", str(root / "ckpt_sharded"),
              "--run", "run_a", "--step", "7", "--out", str(out)])
    df = pd.read_parquet(out)
    assert list(df.columns[:2]) == ["run", "step"]
    assert set(df.run) == {"run_a"} and set(df.step) == {7}
    _check(df.drop(columns=["run", "step"]), base, ckpt)
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.fixture(scope="module")
def bf16_pair(models, tmp_path_factory):
    """The float32 base beside two bf16 checkpoints: the base rounded to bf16 (no training at all), and the base plus
    an update of ~0.1% on two tensors, rounded to bf16 (what a bf16 training run saves)."""
    root, base, _ = models
    out = tmp_path_factory.mktemp("bf16")
    rounded = {k: v.to(torch.bfloat16) for k, v in base.items()}
    (out / "rounded").mkdir()
    save_file(rounded, out / "rounded" / "model.safetensors")
    torch.manual_seed(1)
    trained = dict(rounded)
    for layer, module in TOUCHED:
        name = _tensor_name(layer, module)
        w = base[name]
        trained[name] = (w + 0.01 * w.std() * torch.randn_like(w)).to(torch.bfloat16)
    (out / "trained").mkdir()
    save_file(trained, out / "trained" / "model.safetensors")
    return root / "base", out, base, trained


def test_bf16_rounding_alone_would_look_like_an_update(bf16_pair):
    """The premise: rounding a float32 weight to bf16 moves it by ~0.1-0.4% of its norm."""
    _, _, base, _ = bf16_pair
    w = base[_tensor_name(0, "q_proj")]
    rounding = float(torch.linalg.norm(w.to(torch.bfloat16).float() - w) / torch.linalg.norm(w))
    assert 5e-4 < rounding < 5e-3


def test_a_float32_base_is_compared_in_the_checkpoints_dtype(bf16_pair):
    base_dir, out, _, _ = bf16_pair
    df = relative_updates(base_dir, out / "rounded")
    assert len(df) == LAYERS * len(MODULES) and set(df.dtype) == {"bfloat16"}
    assert (df.rel_update == 0.0).all() and (df.delta_norm == 0.0).all()


def test_a_real_update_is_measured_against_the_rounded_base(bf16_pair):
    base_dir, out, base, trained = bf16_pair
    df = relative_updates(base_dir, out / "trained", chunk_bytes=5 * 32 * 2)
    for row in df.itertuples():
        name = _tensor_name(row.layer, row.module)
        b, c = base[name].to(torch.bfloat16).double(), trained[name].double()
        if (row.layer, row.module) in TOUCHED:
            expected = float(torch.linalg.norm(c - b) / torch.linalg.norm(b))
            assert row.rel_update == pytest.approx(expected, rel=1e-9)
            assert 5e-3 < row.rel_update < 2e-2  # the 1%-of-std update, not the 0.2% rounding
        else:
            assert row.rel_update == 0.0
        assert row.base_norm == pytest.approx(float(torch.linalg.norm(b)), rel=1e-12)


def test_refuse_names_both_files_and_dtypes(bf16_pair, models):
    base_dir, out, _, _ = bf16_pair
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight: F32 in base "
                                         r"\(.*base/model\.safetensors\) but BF16 in checkpoint "
                                         r"\(.*rounded/model\.safetensors\); diff\.dtype_mismatch is refuse"):
        relative_updates(base_dir, out / "rounded", dtype_mismatch="refuse")
    root, base, ckpt = models  # the same dtype on both sides passes under refuse
    _check(relative_updates(root / "base", root / "ckpt", dtype_mismatch="refuse"), base, ckpt)
    with pytest.raises(ValueError, match="diff.dtype_mismatch: 'round' is not one of"):
        relative_updates(base_dir, out / "rounded", dtype_mismatch="round")


def test_cli_takes_the_dtype_policy(bf16_pair, tmp_path):
    base_dir, out, _, _ = bf16_pair
    args = ["diff", "--base", str(base_dir), "--checkpoint", str(out / "rounded"), "--run", "r", "--step", "1"]
    cli.main(args + ["--out", str(tmp_path / "cast.parquet")])
    assert set(pd.read_parquet(tmp_path / "cast.parquet").dtype) == {"bfloat16"}
    with pytest.raises(ValueError, match="F32 in base .* but BF16 in checkpoint"):
        cli.main(args + ["--out", str(tmp_path / "refused.parquet"), "--dtype-mismatch", "refuse"])
    assert not (tmp_path / "refused.parquet").exists()


def _old_diff(base: torch.Tensor, ckpt: torch.Tensor, chunk_rows: int = 1024) -> tuple[float, float]:
    """(delta_norm, base_norm) as diff.py computed them before it took the update pass's sums."""
    delta_sq = base_sq = 0.0
    for start in range(0, base.shape[0], chunk_rows):
        b = base[start:start + chunk_rows].to(ckpt.dtype).double()
        delta_sq += float((ckpt[start:start + chunk_rows].double() - b).square().sum())
        base_sq += float(b.square().sum())
    return delta_sq ** 0.5, base_sq ** 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_one_pass_equals_diffs_former_float64_arithmetic(tmp_path, dtype):
    """Magnitudes over 60 binades (subnormal bf16 included), exact zeros, sign-flipped zeros and frozen elements, in
    64-byte chunks on three threads: the pass's norms are diff's former ones but for the order of float64 sums."""
    gen = torch.Generator().manual_seed(5)
    shapes = {"q_proj": (40, 24), "down_proj": (24, 56)}
    base, ckpt = {}, {}
    for module, shape in shapes.items():
        scale = torch.exp2(torch.randint(-40 if dtype != torch.float16 else -20, 4, shape, generator=gen).float())
        b = (torch.randn(shape, generator=gen) * scale).to(dtype)
        b[0, :5] = 0.0
        c = (b.float() * (1 + 0.01 * torch.randn(shape, generator=gen))).to(dtype)
        c[1] = b[1]  # a frozen row
        c[0, :3] = -b[0, :3]  # -0.0 for +0.0
        base[_tensor_name(0, module)], ckpt[_tensor_name(0, module)] = b, c
    (tmp_path / "base").mkdir()
    (tmp_path / "ckpt").mkdir()
    save_file(base, tmp_path / "base" / "model.safetensors")
    save_file(ckpt, tmp_path / "ckpt" / "model.safetensors")
    df = relative_updates(tmp_path / "base", tmp_path / "ckpt", chunk_bytes=64, threads=3)
    assert list(df.module) == ["q_proj", "down_proj"] and set(df.dtype) == {str(dtype).removeprefix("torch.")}
    for row in df.itertuples():
        name = _tensor_name(0, row.module)
        delta_norm, base_norm = _old_diff(base[name], ckpt[name])
        assert row.delta_norm == pytest.approx(delta_norm, rel=1e-14, abs=0)
        assert row.base_norm == pytest.approx(base_norm, rel=1e-14, abs=0)
        assert row.rel_update == pytest.approx(delta_norm / base_norm, rel=1e-14, abs=0)


def test_diff_from_the_update_table_is_the_diff_of_the_folders(models, tmp_path):
    """The workflow's diff (`diff --update` over `weights update`) writes the table `diff --base --checkpoint` does."""
    root, base, ckpt = models
    pair = ["--base", str(root / "base"), "--checkpoint", str(root / "ckpt_sharded"), "--run", "r", "--step", "3"]
    cli.main(["weights", "update", *pair, "--out", str(tmp_path / "update.parquet")])
    cli.main(["diff", "--update", str(tmp_path / "update.parquet"), "--out", str(tmp_path / "from_update.parquet")])
    cli.main(["diff", *pair, "--out", str(tmp_path / "direct.parquet")])
    ours = pd.read_parquet(tmp_path / "from_update.parquet")
    pd.testing.assert_frame_equal(ours, pd.read_parquet(tmp_path / "direct.parquet"))
    assert list(ours.columns) == ["run", "step", "layer", "module", "rel_update", "delta_norm", "base_norm", "dtype",
                                 "reference_dtype"]
    _check(ours.drop(columns=["run", "step"]), base, ckpt)
    with pytest.raises(SystemExit):
        cli.main(["diff", "--update", str(tmp_path / "update.parquet"), "--run", "r", "--out", str(tmp_path / "x")])

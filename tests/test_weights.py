"""scalpel.analysis.weights and scalpel.analysis.tensor_stream against direct computations on small matrices."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scalpel import cli
from scalpel.analysis import weights
from scalpel.analysis.diff import MODULES, relative_updates
from scalpel.analysis.tensor_stream import ChunkReader, model_tensors, read_header
from scalpel.report.weight_tables import summarize

SHAPES = {"q_proj": (16, 16), "k_proj": (8, 16), "v_proj": (8, 16), "o_proj": (16, 16),
          "gate_proj": (24, 16), "up_proj": (24, 16), "down_proj": (16, 24)}
LAYERS = 2


def _name(layer: int, module: str) -> str:
    block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{module}.weight"


def _save(folder, tensors: dict, shard: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    if not shard:
        save_file(tensors, folder / "model.safetensors")
        return folder
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, folder / file)
    weight_map = {n: file for file, part in halves.items() for n in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _distinct_bf16(n: int, gen) -> torch.Tensor:
    """n bf16 values of distinct magnitudes (in [2^-8, 2^-2)), random signs, shuffled."""
    codes = torch.arange(0x3B80, 0x3E80, dtype=torch.int32)  # 768 consecutive positive bf16 bit patterns
    pick = codes[torch.randperm(len(codes), generator=gen)[:n]]
    sign = (torch.rand(n, generator=gen) < 0.5).to(torch.int32) << 15
    return (pick | sign).to(torch.int16).view(torch.bfloat16)


def _model(gen, base=None, update=None):
    """In-scope matrices (plus an embedding and a norm, out of scope): random bf16 base, or base + update(w)."""
    out = {}
    for layer in range(LAYERS):
        for module, shape in SHAPES.items():
            name = _name(layer, module)
            if base is None:
                out[name] = _distinct_bf16(math.prod(shape), gen).view(shape)
            else:
                out[name] = update(layer, module, base[name])
    out["model.embed_tokens.weight"] = torch.ones(5, 16, dtype=torch.bfloat16)
    out["model.norm.weight"] = torch.ones(16, dtype=torch.bfloat16)
    return out


def _sparse_update(gen, touched=None):
    """Adds 3% of |w| to a random 40% of the elements, more often where |w| is small; frozen outside `touched`."""
    def update(layer, module, w):
        if touched is not None and (layer, module) not in touched:
            return w.clone()
        wf = w.float()
        rank = wf.abs().flatten().argsort().argsort().float().view(w.shape) / w.numel()
        mask = torch.rand(w.shape, generator=gen) < 0.7 - 0.6 * rank
        return torch.where(mask, wf * 1.03, wf).to(w.dtype)
    return update


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    root = tmp_path_factory.mktemp("weights")
    base = _model(gen)
    touched = {(0, m) for m in MODULES} | {(1, "q_proj"), (1, "down_proj")}
    ckpt = _model(gen, base, _sparse_update(gen, touched))
    other = _model(gen, base, _sparse_update(gen))
    _save(root / "base", base)
    _save(root / "ckpt", ckpt, shard=True)
    _save(root / "other", other)
    return root, base, ckpt, other, touched


# ---- direct computations --------------------------------------------------------------------------------------------

def _direct_update(b: torch.Tensor, c: torch.Tensor, alpha: float) -> dict:
    """Straight from the definitions, float64, topk for the reference sets (magnitudes are distinct here)."""
    bits = b.view(torch.int16) if b.dtype == torch.bfloat16 else b.view(torch.int32)
    cbits = c.view(torch.int16) if c.dtype == torch.bfloat16 else c.view(torch.int32)
    bd, cd = b.double().flatten(), c.double().flatten()
    unchanged_tol = (cd - bd).abs() <= 1e-3 * torch.maximum(bd.abs(), cd.abs())
    updated = ~unchanged_tol
    k = round(alpha * bd.numel())
    top = torch.zeros_like(updated)
    top[bd.abs().topk(k).indices] = True
    bottom = torch.zeros_like(updated)
    bottom[bd.abs().topk(k, largest=False).indices] = True
    n_upd = int(updated.sum())
    return {"unchanged_bitwise": float((bits == cbits).double().mean()),
            "unchanged_tol": float(unchanged_tol.double().mean()),
            "overlap_top": int((updated & top).sum()) / n_upd if n_upd else math.nan,
            "overlap_bottom": int((updated & bottom).sum()) / n_upd if n_upd else math.nan,
            "rel_update": float((cd - bd).norm() / bd.norm())}


def _same(a: float, b: float, rel: float = 1e-12) -> bool:
    """Equal (NaN too); sums of squares run in float32 per row, hence rel 1e-6 for norms."""
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=1e-15)


# ---- tensor_stream ------------------------------------------------------------------------------------------------

def test_header_matches_safetensors(tmp_path):
    tensors = {"a": torch.arange(12, dtype=torch.float32).view(3, 4), "b": torch.ones(5, dtype=torch.bfloat16),
               "c": torch.zeros(2, 3, 4, dtype=torch.float16), "d": torch.tensor(7, dtype=torch.int64)}
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    entries = read_header(tmp_path / "m.safetensors")
    assert set(entries) == set(tensors)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as fh:
        for name, entry in entries.items():
            assert list(entry.shape) == fh.get_slice(name).get_shape()
            assert entry.dtype == fh.get_slice(name).get_dtype()
    with ChunkReader(direct=False) as reader:
        for name, t in tensors.items():
            got = reader.read(entries[name])
            assert got.dtype == t.dtype and torch.equal(got.reshape(t.shape), t)


@pytest.mark.parametrize("direct", [True, False])
def test_lockstep_chunks_reassemble(tmp_path, direct):
    """Chunks of one row up to whole tensors, over files of different dtypes, put back together exactly."""
    gen = torch.Generator().manual_seed(1)
    a = {"x": torch.randn(7, 5, generator=gen), "y": torch.randn(3, 9, generator=gen)}
    b = {"x": torch.randn(7, 5, generator=gen).to(torch.bfloat16), "y": torch.randn(3, 9, generator=gen).half()}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    ea, eb = read_header(tmp_path / "a.safetensors"), read_header(tmp_path / "b.safetensors")
    for chunk_bytes in (1, 24, 100, 1 << 20):
        parts = {(g, i): [] for g in range(2) for i in range(2)}
        with ChunkReader(chunk_bytes, direct=direct) as reader:
            for g, start, chunks in reader.lockstep([[ea["x"], eb["x"]], [ea["y"], eb["y"]]]):
                assert start == sum(p.shape[0] for p in parts[(g, 0)])
                for i, c in enumerate(chunks):
                    parts[(g, i)].append(c.clone())
        for g, name in enumerate(("x", "y")):
            assert torch.equal(torch.cat(parts[(g, 0)]), a[name])
            assert torch.equal(torch.cat(parts[(g, 1)]), b[name])


def test_for_each_chunk_sees_every_chunk_once_and_passes_errors_on(tmp_path):
    t = torch.arange(60 * 8, dtype=torch.float32).view(60, 8)
    save_file({"w": t, "v": -t}, tmp_path / "m.safetensors")
    e = read_header(tmp_path / "m.safetensors")
    seen = {}

    def collect(worker, g, start, chunks):
        seen[(g, start)] = [c.clone() for c in chunks]

    with ChunkReader(chunk_bytes=64) as reader:  # 2 rows a chunk, 30 chunks a group
        reader.for_each_chunk([[e["w"], e["v"]], [e["v"], e["w"]]], collect, workers=3)
    assert len(seen) == 60
    for g, (first, second) in enumerate([(t, -t), (-t, t)]):
        assert torch.equal(torch.cat([seen[(g, r)][0] for r in range(0, 60, 2)]), first)
        assert torch.equal(torch.cat([seen[(g, r)][1] for r in range(0, 60, 2)]), second)

    def fail(worker, g, start, chunks):
        if start == 20:
            raise RuntimeError("chunk at row 20")

    with ChunkReader(chunk_bytes=64) as reader, pytest.raises(RuntimeError, match="chunk at row 20"):
        reader.for_each_chunk([[e["w"]]], fail, workers=2)


def test_a_file_system_without_o_direct_is_read_buffered():
    """tmpfs refuses O_DIRECT: the reader falls back to plain reads."""
    import os
    import tempfile
    if not os.path.isdir("/dev/shm") or not hasattr(os, "O_DIRECT"):
        pytest.skip("no tmpfs at /dev/shm to try")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        t = torch.arange(4000, dtype=torch.float32).view(40, 100)
        save_file({"w": t}, f"{folder}/m.safetensors")
        try:
            os.close(os.open(f"{folder}/m.safetensors", os.O_RDONLY | os.O_DIRECT))
            pytest.skip("this /dev/shm accepts O_DIRECT")
        except OSError:
            pass
        with ChunkReader(chunk_bytes=1000, direct=True) as reader:
            entry = read_header(f"{folder}/m.safetensors")["w"]
            assert torch.equal(reader.read(entry), t)
            assert torch.equal(torch.cat([c[0].clone() for _, _, c in reader.lockstep([[entry]])]), t)


def test_o_direct_refused_at_open_or_read_falls_back(tmp_path, monkeypatch):
    """Where the file system refuses O_DIRECT (EINVAL at open, or at the first aligned read), plain reads serve."""
    import errno
    import os
    t = torch.arange(3000, dtype=torch.bfloat16).view(30, 100)
    save_file({"w": t}, tmp_path / "m.safetensors")
    entry = read_header(tmp_path / "m.safetensors")["w"]
    real_open, real_preadv = os.open, os.preadv
    direct_fds = set()

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT and refuse == "open":
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        fd = real_open(path, flags, *args)
        (direct_fds.add if flags & os.O_DIRECT else direct_fds.discard)(fd)  # numbers are reused after close
        return fd

    def refusing_preadv(fd, buffers, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "unaligned")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "preadv", refusing_preadv)
    for refuse in ("open", "read"):
        direct_fds.clear()
        with ChunkReader(chunk_bytes=512, direct=True) as reader:
            assert torch.equal(torch.cat([c[0].clone() for _, _, c in reader.lockstep([[entry]])]), t)
            assert torch.equal(reader.read(entry), t)
            assert not any(direct for _, direct in reader._fds.values())


def test_truncated_file_is_named(tmp_path):
    save_file({"w": torch.ones(64, 64)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'w' ends past the end of the file"):
        model_tensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(data[:4])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        read_header(tmp_path / "model.safetensors")


# ---- update_metrics -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_bytes", [1 << 20, 40])
def test_update_metrics_match_the_definitions(pair, chunk_bytes):
    root, base, ckpt, _, touched = pair
    df = weights.update_metrics(root / "base", root / "ckpt", alpha=0.25, chunk_bytes=chunk_bytes, threads=2)
    assert list(zip(df.layer, df.module)) == [(i, m) for i in range(LAYERS) for m in MODULES]
    for row in df.itertuples():
        name = _name(row.layer, row.module)
        want = _direct_update(base[name], ckpt[name], 0.25)
        for key, value in want.items():
            assert _same(getattr(row, key), value, rel=1e-6 if key == "rel_update" else 1e-12), (name, key)
        if (row.layer, row.module) in touched:
            assert 0.3 < row.unchanged_bitwise < 0.8
            assert row.overlap_bottom > 0.25 > row.overlap_top  # the update favours small weights
        else:
            assert row.unchanged_bitwise == row.unchanged_tol == 1.0 and row.rel_update == 0.0
            assert math.isnan(row.overlap_top) and math.isnan(row.overlap_bottom)
        assert row.overlap_random == 0.25 and row.dtype == "bfloat16"


def test_rel_update_equals_diff(pair):
    root, *_ = pair
    ours = weights.update_metrics(root / "base", root / "ckpt")
    theirs = relative_updates(root / "base", root / "ckpt")
    assert np.allclose(ours.rel_update, theirs.rel_update, rtol=1e-6, atol=0)


def test_threads_and_chunks_do_not_change_the_result(pair):
    root, *_ = pair
    one = weights.update_metrics(root / "base", root / "other", threads=1, direct=False)
    many = weights.update_metrics(root / "base", root / "other", threads=3, chunk_bytes=64)
    pd.testing.assert_frame_equal(one.drop(columns=["delta_sq", "base_sq", "rel_update"]),
                                  many.drop(columns=["delta_sq", "base_sq", "rel_update"]))
    assert np.allclose(one.rel_update, many.rel_update, rtol=1e-12)


def test_an_update_bf16_rounds_away(tmp_path):
    """A float32 base (bf16-representable values), and the same weights + 1e-5 relative update: saved in bf16 the
    update is gone, bit for bit; saved in float32 every bit pattern changed, but within the tolerance."""
    gen = torch.Generator().manual_seed(2)
    base = {_name(0, m): torch.randn(s, generator=gen).to(torch.bfloat16).float() for m, s in SHAPES.items()}
    moved = {n: w * (1 + 1e-5 * torch.sign(torch.randn(w.shape, generator=gen))) for n, w in base.items()}
    _save(tmp_path / "base", base)
    _save(tmp_path / "bf16", {n: w.to(torch.bfloat16) for n, w in moved.items()})
    _save(tmp_path / "fp32", moved)
    rounded = weights.update_metrics(tmp_path / "base", tmp_path / "bf16")
    assert set(rounded.dtype) == {"bfloat16"}
    assert (rounded.unchanged_bitwise == 1).all() and (rounded.unchanged_tol == 1).all()
    assert (rounded.rel_update == 0).all() and rounded.overlap_top.isna().all()
    exact = weights.update_metrics(tmp_path / "base", tmp_path / "fp32")
    assert set(exact.dtype) == {"float32"}
    assert (exact.unchanged_bitwise < 0.01).all() and (exact.unchanged_tol == 1).all()
    for row in exact.itertuples():
        name = _name(0, row.module)
        assert _same(row.unchanged_bitwise, _direct_update(base[name], moved[name], 0.3)["unchanged_bitwise"])
        assert row.rel_update == pytest.approx(1e-5, rel=1e-2)


def test_float32_overlap_and_tolerance(tmp_path):
    """float32 weights with distinct bf16-truncated magnitudes (ranked exactly), updates above and below rtol."""
    gen = torch.Generator().manual_seed(3)
    shape = (24, 16)
    base = _distinct_bf16(math.prod(shape), gen).view(shape).float()
    factor = torch.where(torch.rand(shape, generator=gen) < 0.5, 1 + 5e-4, 1 + 5e-3)  # below / above rtol
    new = torch.where(torch.rand(shape, generator=gen) < 0.6, base * factor, base)
    _save(tmp_path / "base", {_name(0, "up_proj"): base})
    _save(tmp_path / "new", {_name(0, "up_proj"): new})
    row = weights.update_metrics(tmp_path / "base", tmp_path / "new", alpha=0.25).iloc[0]
    want = _direct_update(base, new, 0.25)
    for key, value in want.items():
        assert _same(row[key], value, rel=1e-6 if key == "rel_update" else 1e-12), key
    assert row.unchanged_tol - row.unchanged_bitwise > 0.2


def test_bf16_fast_path_equals_the_tolerance_formula(tmp_path):
    """Every positive finite bf16 value, and its negation, against its neighbours, signed zeros, subnormals and
    sign flips: unchanged_tol from bits (rtol 1e-3) equals the formula, and so does the general path (rtol 5e-3,
    where a one-ulp step of a large mantissa passes)."""
    codes = torch.arange(0, 0x7F80, dtype=torch.int32)
    pos = codes.to(torch.int16).view(torch.bfloat16)
    zeros = torch.zeros(8, dtype=torch.bfloat16)
    base = torch.cat([zeros, pos, -pos, pos, pos])
    new = torch.cat([-zeros, (codes + 1).clamp(max=0x7F7F).to(torch.int16).view(torch.bfloat16), -pos, -pos, pos])
    cols = 64
    n = base.numel() // cols * cols
    base, new = base[:n].view(-1, cols), new[:n].view(-1, cols)
    _save(tmp_path / "base", {_name(0, "q_proj"): base})
    _save(tmp_path / "new", {_name(0, "q_proj"): new})
    for rtol in (1e-3, 5e-3):
        row = weights.update_metrics(tmp_path / "base", tmp_path / "new", rtol=rtol).iloc[0]
        bd, nd = base.double(), new.double()
        want = float(((nd - bd).abs() <= rtol * torch.maximum(bd.abs(), nd.abs())).double().mean())
        assert row.unchanged_tol == pytest.approx(want, rel=1e-12)
        assert row.unchanged_bitwise == pytest.approx(
            float((base.view(torch.int16) == new.view(torch.int16)).double().mean()), rel=1e-12)
    assert row.unchanged_tol > weights.update_metrics(tmp_path / "base", tmp_path / "new").iloc[0].unchanged_tol


def test_ties_at_the_threshold_count_in_proportion(tmp_path):
    """All magnitudes equal: whatever is updated, alpha of it lies in the top and alpha in the bottom set."""
    gen = torch.Generator().manual_seed(4)
    base = torch.where(torch.rand(16, 16, generator=gen) < 0.5, 0.5, -0.5).to(torch.bfloat16)
    new = torch.where(torch.rand(16, 16, generator=gen) < 0.3, base.float() * 1.25, base.float()).to(torch.bfloat16)
    _save(tmp_path / "base", {_name(0, "o_proj"): base})
    _save(tmp_path / "new", {_name(0, "o_proj"): new})
    row = weights.update_metrics(tmp_path / "base", tmp_path / "new", alpha=0.3).iloc[0]
    assert row.overlap_top == pytest.approx(0.3, rel=1e-12) and row.overlap_bottom == pytest.approx(0.3, rel=1e-12)


def test_nonfinite_base_is_refused(tmp_path):
    w = torch.ones(8, 16, dtype=torch.bfloat16)
    w[3, 4] = float("inf")
    _save(tmp_path / "base", {_name(0, "k_proj"): w})
    _save(tmp_path / "new", {_name(0, "k_proj"): w})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight: 1 infinite or NaN"):
        weights.update_metrics(tmp_path / "base", tmp_path / "new")


def test_mismatched_folders_are_named(pair, tmp_path):
    root, base, ckpt, _, _ = pair
    missing = _name(1, "v_proj")
    _save(tmp_path / "missing", {k: v for k, v in ckpt.items() if k != missing})
    with pytest.raises(ValueError, match=rf"{missing}: in base \(.*base/model\.safetensors\) but not in checkpoint"):
        weights.update_metrics(root / "base", tmp_path / "missing")
    wrong = _name(0, "k_proj")
    _save(tmp_path / "shape", {**ckpt, wrong: torch.zeros(16, 8, dtype=torch.bfloat16)})
    with pytest.raises(ValueError, match=rf"{wrong}: shape \[8, 16\] in base .* but \[16, 8\] in checkpoint"):
        weights.update_metrics(root / "base", tmp_path / "shape")
    _save(tmp_path / "fp32", {k: v.float() for k, v in ckpt.items()})
    with pytest.raises(ValueError, match=r"BF16 in base .* but F32 in checkpoint .*dtype_mismatch is refuse"):
        weights.update_metrics(root / "base", tmp_path / "fp32", dtype_mismatch="refuse")
    with pytest.raises(ValueError, match="alpha must lie in"):
        weights.update_metrics(root / "base", root / "ckpt", alpha=1.5)


# ---- run_alignment ------------------------------------------------------------------------------------------------

def test_alignment_matches_the_definitions(pair):
    root, base, ckpt, other, touched = pair
    df = weights.run_alignment(root / "base", root / "ckpt", root / "other", chunk_bytes=100)
    for row in df.itertuples():
        name = _name(row.layer, row.module)
        b = base[name].double().flatten()
        da, db = ckpt[name].double().flatten() - b, other[name].double().flatten() - b
        ma, mb = da != 0, db != 0
        if (row.layer, row.module) in touched:
            assert row.cosine == pytest.approx(float(da @ db / (da.norm() * db.norm())), rel=1e-6)
            assert row.jaccard == pytest.approx(int((ma & mb).sum()) / int((ma | mb).sum()), rel=1e-12)
        else:  # run a froze it
            assert math.isnan(row.cosine) and row.jaccard == 0.0
        p, q = float(ma.double().mean()), float(mb.double().mean())
        assert row.jaccard_random == pytest.approx(p * q / (p + q - p * q), rel=1e-12)


def test_identical_orthogonal_and_frozen_updates(tmp_path):
    gen = torch.Generator().manual_seed(5)  # 4j * 2^-8: times 1.25 and 0.75 exact in bf16
    w = (4 * torch.randint(2, 16, (16, 16), generator=gen) * torch.randint(0, 2, (16, 16), generator=gen).mul(2).sub(1)
         * 2.0 ** -8).to(torch.bfloat16)
    even = torch.zeros(16, 16, dtype=torch.bool)
    even[:, ::2] = True
    up = torch.where(even, w.float() * 1.25, w.float()).to(torch.bfloat16)  # only even columns move
    side = torch.where(~even, w.float() * 1.25, w.float()).to(torch.bfloat16)  # only odd ones
    down = torch.where(even, w.float() * 0.75, w.float()).to(torch.bfloat16)
    for label, t in {"base": w, "up": up, "side": side, "down": down}.items():
        _save(tmp_path / label, {_name(0, "q_proj"): t})
    row = lambda a, b: weights.run_alignment(tmp_path / "base", tmp_path / a, tmp_path / b).iloc[0]  # noqa: E731
    same = row("up", "up")
    assert same.cosine == pytest.approx(1.0, rel=1e-6) and same.jaccard == 1.0
    assert same.jaccard_random == pytest.approx(0.5 * 0.5 / (0.5 + 0.5 - 0.25))
    orth = row("up", "side")
    assert orth.cosine == 0.0 and orth.jaccard == 0.0
    assert row("up", "down").cosine == pytest.approx(-1.0, rel=1e-6)
    frozen = row("base", "up")
    assert math.isnan(frozen.cosine) and frozen.jaccard == 0.0 and frozen.updated_a == 0.0
    both = row("base", "base")
    assert math.isnan(both.cosine) and math.isnan(both.jaccard) and math.isnan(both.jaccard_random)


# ---- spectra ------------------------------------------------------------------------------------------------------

def test_rank_one_update_has_stable_rank_one():
    gen = torch.Generator().manual_seed(6)
    u, v = torch.randn(40, 1, generator=gen, dtype=torch.float64), torch.randn(1, 30, generator=gen,
                                                                                 dtype=torch.float64)
    s = torch.linalg.svdvals(u @ v)
    assert weights.stable_rank(s) == pytest.approx(1.0, abs=1e-12)
    assert weights.effective_rank(s) == pytest.approx(1.0, abs=1e-9)
    flat = torch.ones(5, dtype=torch.float64)  # five equal singular values
    assert weights.stable_rank(flat) == pytest.approx(5.0) and weights.effective_rank(flat) == pytest.approx(5.0)
    assert math.isnan(weights.stable_rank(torch.zeros(4))) and math.isnan(weights.effective_rank(torch.zeros(4)))


def _rotated(k: int, theta_deg: float, m: int = 48, n: int = 32, seed: int = 7):
    """W = U S V^T with distinct singular values, and Q W with Q rotating u_k towards u_{k+1} by theta."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.linspace(10, 1, n, dtype=torch.float64)
    w = u[:, :n] @ torch.diag(s) @ v.T
    a, b = u[:, k - 1:k], u[:, k:k + 1]
    t = math.radians(theta_deg)
    q = torch.eye(m, dtype=torch.float64) + (math.cos(t) - 1) * (a @ a.T + b @ b.T) + math.sin(t) * (b @ a.T - a @ b.T)
    return w, q @ w


def test_rotation_gives_its_principal_angle():
    w, w_rot = _rotated(k=4, theta_deg=10.0)
    s, u, v = weights.decompose(w, 8)
    s2, u2, v2 = weights.decompose(w_rot, 8)
    assert weights.max_principal_angle(u[:, :4], u2[:, :4]) == pytest.approx(10.0, abs=1e-9)
    assert weights.max_principal_angle(u[:, :3], u2[:, :3]) == pytest.approx(0.0, abs=1e-6)
    assert weights.max_principal_angle(v[:, :4], v2[:, :4]) == pytest.approx(0.0, abs=1e-6)
    assert weights.spectral_shift(s, s2) == pytest.approx(0.0, abs=1e-14)


def test_principal_angles_and_spectral_shift_against_scipy():
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(60, 40, generator=gen, dtype=torch.float64)
    w2 = w + 0.05 * torch.randn(60, 40, generator=gen, dtype=torch.float64)
    s, u, v = weights.decompose(w, 10)
    s2, u2, v2 = weights.decompose(w2, 10)
    for k in (1, 5, 10):
        for a, b in ((u, u2), (v, v2)):
            oracle = math.degrees(scipy.linalg.subspace_angles(a[:, :k].numpy(), b[:, :k].numpy()).max())
            assert weights.max_principal_angle(a[:, :k], b[:, :k]) == pytest.approx(oracle, rel=1e-8)
    s_np, s2_np = (np.linalg.svd(x.numpy(), compute_uv=False) for x in (w, w2))
    assert weights.spectral_shift(s, s2) == pytest.approx(np.linalg.norm(s2_np - s_np) / np.linalg.norm(s_np), rel=1e-9)
    # Mirsky: ||s(W') - s(W)|| <= ||W' - W||_F
    assert weights.spectral_shift(s, s2) * float(s.norm()) <= float((w2 - w).norm())


def test_lowrank_subspaces_are_close_to_the_full_svd():
    """A matrix with a decaying spectrum, as trained weights have: svd_lowrank's top-16 subspace within 0.5 degree
    of the exact one (the benchmark reports the error on 7B-like sizes)."""
    gen = torch.Generator().manual_seed(9)
    u, _ = torch.linalg.qr(torch.randn(200, 120, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(150, 120, generator=gen, dtype=torch.float64))
    w = (u @ torch.diag(1.0 / torch.arange(1, 121, dtype=torch.float64)) @ v.T).float()
    torch.manual_seed(0)
    s, uf, vf = weights.decompose(w, 16, "full")
    sl, ul, vl = weights.decompose(w, 16, "lowrank")
    assert torch.allclose(s, sl, rtol=1e-5, atol=1e-6)
    assert weights.max_principal_angle(uf, ul) < 0.5 and weights.max_principal_angle(vf, vl) < 0.5


def test_spectral_metrics_match_the_definitions(tmp_path):
    """Through the files: a rotated matrix, a rank-1 update, and a frozen one; float32 storage, float64 maths."""
    w, w_rot = _rotated(k=4, theta_deg=10.0)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(16, 24, generator=gen, dtype=torch.float64)
    rank1 = x + 0.1 * torch.randn(16, 1, generator=gen, dtype=torch.float64) @ torch.randn(1, 24, generator=gen,
                                                                                         dtype=torch.float64)
    frozen = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    # q_proj holds W^T, so W's left vectors are its right ones
    base = {_name(0, "q_proj"): w.T.float().contiguous(), _name(0, "down_proj"): x.float(),
            _name(0, "up_proj"): frozen.float()}
    new = {_name(0, "q_proj"): w_rot.T.float().contiguous(), _name(0, "down_proj"): rank1.float(),
           _name(0, "up_proj"): frozen.float()}
    _save(tmp_path / "base", base)
    _save(tmp_path / "new", new)
    df = weights.spectral_metrics(tmp_path / "base", {"run": tmp_path / "new", "same": tmp_path / "base"},
                                  ks=(3, 4), precision=torch.float64)
    rows = {(r.checkpoint, r.module): r for r in df.itertuples()}
    rot = rows[("run", "q_proj")]
    assert rot.angle_right_k4 == pytest.approx(10.0, abs=1e-3) and rot.angle_right_k3 < 1e-3
    assert rot.angle_left_k4 < 1e-3
    r1 = rows[("run", "down_proj")]
    assert r1.stable_rank == pytest.approx(1.0, abs=1e-9)
    d = rank1.float().double() - x.float().double()
    sd = torch.linalg.svdvals(d)
    assert r1.effective_rank == pytest.approx(float(torch.exp(-(sd / sd.sum() * (sd / sd.sum()).log()).sum())),
                                              rel=1e-6)
    sx, sr = torch.linalg.svdvals(x.float().double()), torch.linalg.svdvals(rank1.float().double())
    assert r1.nss == pytest.approx(float((sr - sx).norm() / sx.norm()), rel=1e-9)
    for label, module in [("run", "up_proj"), ("same", "q_proj"), ("same", "down_proj"), ("same", "up_proj")]:
        r = rows[(label, module)]
        assert r.nss == 0.0 and r.angle_left_k4 == 0.0 and r.angle_right_k3 == 0.0
        assert math.isnan(r.stable_rank) and math.isnan(r.effective_rank)
    with pytest.raises(ValueError, match=r"up_proj\.weight: k = 32 exceeds its shape \[24, 16\]"):
        weights.spectral_metrics(tmp_path / "base", {"run": tmp_path / "new"}, ks=(32,))


# ---- model means and the command line -------------------------------------------------------------------------------

def test_summarize_pools_over_the_model(pair):
    root, base, ckpt, other, touched = pair
    upd = weights.update_metrics(root / "base", root / "ckpt")
    model = summarize(upd).iloc[0]
    names = [_name(i, m) for i in range(LAYERS) for m in MODULES]
    b = torch.cat([base[n].flatten() for n in names])
    c = torch.cat([ckpt[n].flatten() for n in names])
    assert model.matrices == len(names)
    assert model.unchanged_bitwise == pytest.approx(float((b.view(torch.int16) == c.view(torch.int16)).double().mean()))
    assert model.rel_update == pytest.approx(float((c.double() - b.double()).norm() / b.double().norm()), rel=1e-6)
    hits = sum(r.top_hits for r in upd.itertuples())
    assert model.overlap_top == pytest.approx(hits / upd.n_updated.sum())
    by_module = summarize(upd, by=["module"])
    assert list(by_module.module) == list(MODULES) and (by_module.matrices == LAYERS).all()

    aln = weights.run_alignment(root / "base", root / "ckpt", root / "other")
    model = summarize(aln).iloc[0]
    o = torch.cat([other[n].flatten() for n in names])
    da, db = c.double() - b.double(), o.double() - b.double()
    assert model.cosine == pytest.approx(float(da @ db / (da.norm() * db.norm())), rel=1e-6)
    ma, mb = da != 0, db != 0
    assert model.jaccard == pytest.approx(int((ma & mb).sum()) / int((ma | mb).sum()))
    assert model.updated_a == pytest.approx(float(ma.double().mean()))
    n, pa, pb = aln.n, aln.n_updated_a / aln.n, aln.n_updated_b / aln.n
    assert model.jaccard_random == pytest.approx(float((n * pa * pb).sum() / (n * (pa + pb - pa * pb)).sum()))


def test_summarize_means_spectral_columns_skipping_frozen():
    df = pd.DataFrame({"checkpoint": ["a", "a", "b"], "layer": [0, 1, 0], "module": ["q_proj"] * 3,
                       "nss": [0.1, 0.3, 0.0], "stable_rank": [2.0, math.nan, math.nan]})
    out = summarize(df, by=["checkpoint"]).set_index("checkpoint")
    assert out.loc["a", "nss"] == pytest.approx(0.2) and out.loc["a", "stable_rank"] == 2.0
    assert math.isnan(out.loc["b", "stable_rank"]) and out.loc["b", "matrices"] == 1


def test_cli_writes_each_table(pair, tmp_path):
    root, *_ = pair
    scalpel = lambda *argv: cli.main(["weights", *map(str, argv)])  # noqa: E731
    scalpel("update", "--base", root / "base", "--checkpoint", root / "ckpt", "--run", "r", "--step", 3,
            "--out", tmp_path / "u.parquet", "--buffered")
    scalpel("align", "--base", root / "base", "--checkpoint-a", root / "ckpt", "--run-a", "r", "--step-a", 3,
            "--checkpoint-b", root / "other", "--run-b", "o", "--step-b", 4, "--out", tmp_path / "a.parquet")
    scalpel("spectral", "--base", root / "base", "--checkpoint", f"3={root / 'ckpt'}", "--run", "r", "--ks", 2, 4,
            "--out", tmp_path / "s.parquet")
    u, a, s = (pd.read_parquet(tmp_path / f"{x}.parquet") for x in "uas")
    assert len(u) == len(a) == len(s) == LAYERS * len(MODULES)
    assert {"unchanged_bitwise", "overlap_top"} <= set(u) and "cosine" in a
    assert set(u.run) == {"r"} and set(u.step) == {3}
    assert (set(a.run_a), set(a.step_a), set(a.run_b), set(a.step_b)) == ({"r"}, {3}, {"o"}, {4})
    assert {"angle_left_k2", "angle_right_k4"} <= set(s) and set(s.step) == {3} and set(s.run) == {"r"}
    with pytest.raises(SystemExit):
        scalpel("spectral", "--base", root / "base", "--checkpoint", root / "ckpt", "--run", "r",
                "--out", tmp_path / "x.parquet")

"""What post-training did to the weights, per layer x module: q, k, v, o, gate, up, down_proj, the scope of the
paper's metric (diff.py's name pattern); embeddings, lm_head and norms are never read.

`update_metrics(base, checkpoint)`: one streamed pass, both checkpoints read once, in row chunks:
- `unchanged_bitwise`: fraction of elements whose stored bits are identical (the exact form of Mukherjee et al.
  2025, arXiv 2505.11711, who test |w' - w| <= 1e-5 on bf16 weights);
- `unchanged_tol`: fraction with |w' - w| <= rtol * max(|w|, |w'|), rtol 1e-3 (Zhu et al. 2025, "The Path Not
  Taken", arXiv 2511.08567). A bf16 value that changes at all moves by more than that, so in bf16 the two differ
  only by +0 <-> -0; in float32 the tolerance ignores changes below bf16's resolution (the storage-rounding
  confound). "Updated" below means not unchanged_tol;
- `overlap_top` / `overlap_bottom`: of the updated elements, the fraction among the `alpha` (0.3) largest
  (smallest) |W_base| of the matrix, beside its random baseline `overlap_random` = alpha. Magnitudes are ranked by
  their 15 bits after the sign: exact in bf16 and fp16, bf16-truncated for float32; elements tied at the threshold
  count in proportion (the expectation under random tie-breaking), so the reference set is exactly alpha * n;
- `rel_update` ||dW||_F / ||W||_F from `delta_sq` and `base_sq`, float64 sums of exact terms: diff.py's table
  (the paper's metric) is made from them, so the workflow reads each pair once.
The base is compared in the checkpoint's dtype, as in diff.py (`dtype_mismatch` "cast" or "refuse").

`run_alignment(base, run_a, run_b)`: one streamed pass over three folders: `cosine` of vec(dW_a) and vec(dW_b),
and `jaccard` of their update masks beside `jaccard_random` = pq / (p + q - pq), p and q the masks' densities.

`spectral_metrics(base, {label: checkpoint})`: one whole matrix at a time (float32 by default), the base
decomposed once for all checkpoints:
- `nss`: ||s(W') - s(W)||_2 / ||s(W)||_2 over all singular values (Zhu et al. 2025);
- `stable_rank` ||dW||_F^2 / ||dW||_2^2 and `effective_rank` exp(H(s / sum s)) of dW's singular values s;
- `angle_left_k{k}` / `angle_right_k{k}`: the largest principal angle, in degrees, between the top-k left (right)
  singular subspaces of W and W'.

Conventions. A matrix the checkpoint left bit-identical (frozen) has unchanged_* 1, nss 0, angles 0, and NaN for
what has no value: overlap_* (no updated element), stable_rank and effective_rank (dW = 0), cosine with another
run (a zero update has no direction); jaccard and jaccard_random are NaN only when neither run updated the matrix.
Weights must be finite (a base with inf or NaN is refused). `scalpel.report.weight_tables.summarize` gives model
(or per-group) values: pooled over all elements for counts and norms, the mean over matrices (NaN skipped) for
spectral columns.
"""
from __future__ import annotations

import argparse
import math
import threading
from typing import Mapping, Sequence

import pandas as pd
import torch

from scalpel.analysis.matrices import DTYPE_POLICIES, HINT, MODULES, TENSOR_POLICIES, layer_module
from scalpel.analysis.tensor_stream import DEFAULT_CHUNK_BYTES, ChunkReader, TensorEntry, model_tensors
from scalpel.io import check_safetensors, write_parquet

RTOL = 1e-3
ALPHA = 0.3
KS = (16, 64)
SVD_METHODS = ("full", "lowrank")
SUBCHUNK_ELEMENTS = 1 << 18  # slices for the arithmetic: near the caches, few torch calls (2^17: 10% more CPU)
_FLOATS = {"F64", "F32", "BF16", "F16"}
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
_BINS = 1 << 15  # one per magnitude code: the 15 bits after the sign (of the top 16 for float32 and float64)
_NONFINITE = {torch.bfloat16: 0x7F80, torch.float32: 0x7F80, torch.float16: 0x7C00, torch.float64: 0x7FF0}
_EXACT_CODES = (torch.bfloat16, torch.float16)  # dtypes whose magnitude code is the whole magnitude


# ---- matching the folders' tensors -------------------------------------------------------------------------------

def _matrices(dirs: Sequence, labels: Sequence[str], dtype_mismatch: str,
              tensor_mismatch: str = "refuse") -> list[tuple[int, str, list[TensorEntry]]]:
    """(layer, module, [entry in each folder]) for every in-scope matrix of the first folder (the base), in
    layer, MODULES order; a tensor missing or misshapen anywhere raises ValueError naming it, or is left out when
    `tensor_mismatch` is "shared"; so does one of a refused dtype."""
    if dtype_mismatch not in DTYPE_POLICIES:
        raise ValueError(f"diff.dtype_mismatch: {dtype_mismatch!r} is not one of {DTYPE_POLICIES}")
    if tensor_mismatch not in TENSOR_POLICIES:
        raise ValueError(f"diff.tensor_mismatch: {tensor_mismatch!r} is not one of {TENSOR_POLICIES}")
    shared = tensor_mismatch == "shared"
    tables = [model_tensors(d) for d in dirs]
    base, base_src = tables[0]
    wanted = {name: lm for name in base if (lm := layer_module(name)) is not None}
    if not wanted:
        raise ValueError(f"{base_src}: no model.layers.*.{{self_attn,mlp}}.*_proj.weight tensors")
    for (entries, src), label in zip(tables[1:], labels[1:]):
        extra = sorted(n for n in entries if layer_module(n) is not None and n not in wanted)
        if extra and not shared:
            raise ValueError(f"{extra[0]}: in {label} ({src}) but not in base ({base_src}){HINT}")
    out = []
    for name, (layer, module) in sorted(wanted.items(), key=lambda kv: (kv[1][0], MODULES.index(kv[1][1]))):
        b = base[name]
        group = [b]
        if shared and any(entries.get(name) is None or entries[name].shape != b.shape for entries, _ in tables[1:]):
            continue
        for (entries, src), label in zip(tables[1:], labels[1:]):
            e = entries.get(name)
            if e is None:
                raise ValueError(f"{name}: in base ({b.file}) but not in {label} ({src}){HINT}")
            if e.shape != b.shape or len(e.shape) != 2:
                raise ValueError(f"{name}: shape {list(b.shape)} in base ({b.file}) but {list(e.shape)} in {label} "
                                 f"({e.file}); both must be the same matrix shape{HINT}")
            for entry, where in ((b, "base"), (e, label)):
                if entry.dtype not in _FLOATS:
                    raise ValueError(f"{name}: dtype {entry.dtype} in {where} ({entry.file}) is not a floating-point "
                                     "weight")
            if e.dtype != b.dtype and dtype_mismatch == "refuse":
                raise ValueError(f"{name}: {b.dtype} in base ({b.file}) but {e.dtype} in {label} ({e.file}); "
                                 "diff.dtype_mismatch is refuse (cast compares the base rounded to the checkpoint's "
                                 "dtype)")
            group.append(e)
        out.append((layer, module, group))
    return out


# ---- per-chunk arithmetic -----------------------------------------------------------------------------------------
# Each compute thread works on slices of SUBCHUNK_ELEMENTS into its own reused buffers (_Workspace): the arithmetic
# is a handful of memory-bound passes, so what matters is touching each element few times, in cache, without
# allocating.

class _Workspace:
    def __init__(self):
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, key: str, shape, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get((key, dtype))
        if buf is None or buf.numel() < n:
            buf = self._buffers[(key, dtype)] = torch.empty(max(n, SUBCHUNK_ELEMENTS), dtype=dtype)
        return buf[:n].view(shape)


def _slices(*chunks: torch.Tensor):
    rows = max(1, SUBCHUNK_ELEMENTS // chunks[0].shape[1])
    for start in range(0, chunks[0].shape[0], rows):
        yield [c[start:start + rows] for c in chunks]


def _as_float(ws: _Workspace, key: str, x: torch.Tensor) -> torch.Tensor:
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    return ws.get(key, x.shape, compute).copy_(x)


def _delta(ws: _Workspace, key: str, base_f: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """new - base in float32 (float64 for float64 weights), in a buffer of its own."""
    new_f = _as_float(ws, key, new)
    return torch.sub(new_f, base_f.to(new_f.dtype), out=new_f)


def _updated(delta: torch.Tensor, base_f: torch.Tensor, new: torch.Tensor, rtol: float, out: torch.Tensor):
    """1 in `out` where |w' - w| > rtol * max(|w|, |w'|)."""
    if _bits_decide(new.dtype, rtol):  # and distinct floats never subtract to 0 (+0 - -0 does)
        return torch.ne(delta, 0, out=out)
    scale = torch.maximum(base_f.to(delta.dtype).abs(), new.to(delta.dtype).abs()).mul_(rtol)
    return torch.gt(delta.abs(), scale, out=out)


def _sum_sq(x: torch.Tensor) -> float:
    """sum(x^2): row norms in x's dtype (pairwise sums over one row) accumulated in float64."""
    return float(torch.linalg.vector_norm(x, dim=1).double().square().sum())


def _reference_hits(hist_all: torch.Tensor, hist_updated: torch.Tensor, alpha: float, largest: bool) -> float:
    """Expected number of updated elements among the alpha * n largest (smallest) magnitudes, ties at the threshold
    broken at random."""
    counts, updated = (hist_all.flip(0), hist_updated.flip(0)) if largest else (hist_all, hist_updated)
    counts, updated = counts.double(), updated.double()
    cum = counts.cumsum(0)
    target = alpha * float(cum[-1])
    j = min(int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64))), len(cum) - 1)
    before = float(cum[j - 1]) if j else 0.0
    share = (target - before) / float(counts[j]) if counts[j] else 0.0
    return float(updated[:j].sum()) + share * float(updated[j])


def _bits_decide(dtype: torch.dtype, rtol: float) -> bool:
    """Whether "updated" is "stored bits differ" (but for +0 <-> -0): bf16 with rtol < 2^-9. A bf16 value that
    changes at all moves by at least 2^-8 of the larger magnitude (an ulp is 2^-8 to 2^-7 of it), more than rtol."""
    return dtype == torch.bfloat16 and rtol < 2.0 ** -9


class _UpdateStats:
    """Sums over a matrix (or part of one) for update_metrics, and one histogram of a 16-bit key per element: its
    base magnitude code (15 bits) plus 2^15 if it was updated; the low half plus the high half is the histogram of
    all elements, the high half that of the updated ones.

    The squared norms are float64 sums of exact float64 terms, as diff.py computed them before it read through this
    pass (float32 squares drift in the 7th digit). A bf16 or fp16 base's squared norm comes from the histogram, whose
    codes are its exact magnitudes: no pass over the base for it."""

    def __init__(self, dtype: torch.dtype, rtol: float):
        self.dtype, self.rtol = dtype, rtol
        self.n_differ = 0
        self.delta_sq = self.base_sq = 0.0
        self.hist = torch.zeros(2 * _BINS, dtype=torch.int64)

    def add(self, ws: _Workspace, base: torch.Tensor, new: torch.Tensor) -> None:
        bits, shift = _BITS[new.dtype], 8 * new.dtype.itemsize - 16
        by_bits = _bits_decide(new.dtype, self.rtol)
        keys = ws.get("keys", (base.numel(),), torch.int32)
        at = 0
        for b, c in _slices(base, new):
            b = b.to(c.dtype)
            bb, nb = b.view(bits), c.view(bits)
            key = keys[at:at + b.numel()].view(b.shape)
            torch.bitwise_and(bb >> shift if shift else bb, 0x7FFF, out=key)
            base64 = ws.get("base64", b.shape, torch.float64).copy_(b)
            new64 = ws.get("new64", b.shape, torch.float64).copy_(c)
            delta64 = torch.sub(new64, base64, out=new64).view(-1)
            self.delta_sq += float(torch.dot(delta64, delta64))
            if c.dtype not in _EXACT_CODES:
                self.base_sq += float(torch.dot(base64.view(-1), base64.view(-1)))
            if by_bits:  # updated: the stored bits differ (an int16 0/1 is cheaper than a bool); zeros' sign below
                updated = torch.bitwise_xor(bb, nb, out=ws.get("xor", b.shape, bits)).ne_(0)
            else:
                self.n_differ += int(torch.count_nonzero(torch.ne(bb, nb, out=ws.get("differ", b.shape,
                                                                                      torch.bool))))
                base_f = _as_float(ws, "base", b)
                updated = _updated(_delta(ws, "new", base_f, c), base_f, c, self.rtol,
                                   out=ws.get("updated", b.shape, torch.bool))
            key.add_(updated, alpha=_BINS)
            at += b.numel()
        block = torch.bincount(keys, minlength=2 * _BINS)
        if by_bits:
            self.n_differ += int(block[_BINS:].sum())
            if block[_BINS]:  # a zero whose sign alone flipped is not updated
                flips = sum(int(torch.count_nonzero(((b.view(bits) ^ c.view(bits)) == -0x8000)
                                                    & ((b.view(bits) & 0x7FFF) == 0)))
                            for b, c in _slices(base.to(new.dtype), new))
                block[_BINS] -= flips
                block[0] += flips
        self.hist += block

    def merge(self, other: "_UpdateStats") -> None:
        self.n_differ += other.n_differ
        self.delta_sq += other.delta_sq
        self.base_sq += other.base_sq
        self.hist += other.hist

    def nonfinite(self) -> int:
        hist = self.hist[:_BINS] + self.hist[_BINS:]
        return int(hist[_NONFINITE[self.dtype]:_BINS].sum())

    def squared_norms(self) -> tuple[float, float]:
        """(||dW||^2, ||W||^2)."""
        if self.dtype not in _EXACT_CODES:
            return self.delta_sq, self.base_sq
        finite = _NONFINITE[self.dtype]
        magnitudes = torch.arange(finite, dtype=torch.int16).view(self.dtype).double()
        counts = (self.hist[:finite] + self.hist[_BINS:_BINS + finite]).double()
        return self.delta_sq, float((counts * magnitudes.square()).sum())

    def row(self, alpha: float) -> dict:
        hist_all, hist_updated = self.hist[:_BINS] + self.hist[_BINS:], self.hist[_BINS:]
        delta_sq, base_sq = self.squared_norms()
        n = int(hist_all.sum())
        n_updated = int(hist_updated.sum())
        top = _reference_hits(hist_all, hist_updated, alpha, largest=True)
        bottom = _reference_hits(hist_all, hist_updated, alpha, largest=False)
        nan = float("nan")
        return {"dtype": str(self.dtype).removeprefix("torch."), "n": n,
                "unchanged_bitwise": 1 - self.n_differ / n if n else nan,
                "unchanged_tol": 1 - n_updated / n if n else nan,
                "overlap_top": top / n_updated if n_updated else nan,
                "overlap_bottom": bottom / n_updated if n_updated else nan,
                "overlap_random": alpha,
                "rel_update": math.sqrt(delta_sq / base_sq) if base_sq else nan,
                "n_equal": n - self.n_differ, "n_updated": n_updated, "top_hits": top, "bottom_hits": bottom,
                "delta_sq": delta_sq, "base_sq": base_sq}


class _AlignStats:
    def __init__(self, rtol: float):
        self.rtol = rtol
        self.n = self.n_a = self.n_b = self.n_both = 0
        self.dot = self.sq_a = self.sq_b = 0.0

    def add(self, ws: _Workspace, base: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            base_b: torch.Tensor | None = None) -> None:
        """`base_b`: run b's own reference, where it is not run a's (`base`)."""
        for bs, x, y, *rest in _slices(base, a, b, *([] if base_b is None else [base_b])):
            bs_b = rest[0] if rest else bs
            masks, deltas, base_f = [], [], None
            for key, ref, run in (("a", bs, x), ("b", bs_b, y)):
                if base_f is None or run.dtype != x.dtype or ref is not bs:
                    base_f = _as_float(ws, f"base_{key}", ref.to(run.dtype))
                delta = _delta(ws, key, base_f, run)
                masks.append(_updated(delta, base_f, run, self.rtol, out=ws.get(f"mask_{key}", bs.shape,
                                                                                     torch.bool)))
                deltas.append(delta)
            d_a, d_b = deltas
            if d_a.dtype != d_b.dtype:
                d_a, d_b = d_a.double(), d_b.double()
            self.n += bs.numel()
            self.n_a += int(torch.count_nonzero(masks[0]))
            self.n_b += int(torch.count_nonzero(masks[1]))
            self.n_both += int(torch.count_nonzero(masks[0].logical_and_(masks[1])))
            self.dot += float(torch.linalg.vecdot(d_a, d_b, dim=1).double().sum())
            self.sq_a += _sum_sq(d_a)
            self.sq_b += _sum_sq(d_b)

    def merge(self, other: "_AlignStats") -> None:
        for field in ("n", "n_a", "n_b", "n_both", "dot", "sq_a", "sq_b"):
            setattr(self, field, getattr(self, field) + getattr(other, field))

    def row(self) -> dict:
        nan = float("nan")
        union = self.n_a + self.n_b - self.n_both
        p, q = self.n_a / self.n, self.n_b / self.n
        return {"n": self.n,
                "cosine": self.dot / math.sqrt(self.sq_a * self.sq_b) if self.sq_a and self.sq_b else nan,
                "jaccard": self.n_both / union if union else nan,
                "jaccard_random": p * q / (p + q - p * q) if union else nan,
                "updated_a": p, "updated_b": q,
                "dot": self.dot, "delta_sq_a": self.sq_a, "delta_sq_b": self.sq_b,
                "n_updated_a": self.n_a, "n_updated_b": self.n_b, "n_updated_both": self.n_both}


def _check_fraction(name: str, value: float, upper: float = 1.0) -> None:
    if not 0 < value < upper:
        raise ValueError(f"{name} must lie in (0, {upper}), not {value!r}")


# ---- the streamed passes ------------------------------------------------------------------------------------------

def _stream(groups: list[list[TensorEntry]], new_stats, threads: int | None, chunk_bytes: int,
            direct: bool) -> list:
    """The stats of every matrix: its rows read chunk by chunk in lockstep over the folders, each chunk added by
    one of `threads` compute threads (default: torch's thread count) into that thread's stats for the matrix,
    merged when the matrix's last row is in.

    Torch's own intra-op threads are set to 1 meanwhile (restored after): on a shared machine many small OpenMP
    parallel regions stall on their slowest thread, while whole chunks per thread do not."""
    threads = threads or torch.get_num_threads()
    workspaces = [_Workspace() for _ in range(threads)]
    partial: list[dict] = [{} for _ in range(threads)]  # per thread: matrix -> stats
    rows_done = [0] * len(groups)
    results = [None] * len(groups)
    lock = threading.Lock()

    def work(worker: int, g: int, _, chunks) -> None:
        stats = partial[worker].setdefault(g, new_stats(g))
        stats.add(workspaces[worker], *chunks)
        with lock:
            rows_done[g] += chunks[0].shape[0]
            if rows_done[g] == groups[g][0].rows:  # all of the matrix is in: merge what each thread has
                parts = [p.pop(g) for p in partial if g in p]
                for part in parts[1:]:
                    parts[0].merge(part)
                results[g] = parts[0]

    intra_op = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ChunkReader(chunk_bytes, direct, streams=len(groups[0])) as reader:
            reader.for_each_chunk(groups, work, threads)
    finally:
        torch.set_num_threads(intra_op)
    return [r if r is not None else new_stats(g) for g, r in enumerate(results)]


def update_metrics(base_dir, ckpt_dir, *, alpha: float = ALPHA, rtol: float = RTOL, dtype_mismatch: str = "cast",
                   tensor_mismatch: str = "refuse", threads: int | None = None,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, direct: bool = True) -> pd.DataFrame:
    """One row per (layer, module): the sparsity, overlap and relative-update columns of the module docstring, plus
    the counts and squared norms `summarize` pools (n, n_equal, n_updated, top_hits, bottom_hits, delta_sq,
    base_sq). One read of each file, memory of a few chunk buffers per thread."""
    _check_fraction("alpha", alpha)
    _check_fraction("rtol", rtol)
    matrices = _matrices([base_dir, ckpt_dir], ["base", "checkpoint"], dtype_mismatch, tensor_mismatch)
    groups = [group for _, _, group in matrices]
    stats = _stream(groups, lambda g: _UpdateStats(groups[g][1].torch_dtype, rtol), threads, chunk_bytes,
                    direct)
    for s, group in zip(stats, groups):
        if s.nonfinite():
            raise ValueError(f"{group[0].name}: {s.nonfinite()} infinite or NaN weights in base ({group[0].file})")
    return pd.DataFrame([{"layer": layer, "module": module, **s.row(alpha),
                          "reference_dtype": str(group[0].torch_dtype).removeprefix("torch.")}
                         for (layer, module, group), s in zip(matrices, stats)])


def run_alignment(base_dir, run_a_dir, run_b_dir, *, base_b_dir=None, rtol: float = RTOL,
                  dtype_mismatch: str = "cast", tensor_mismatch: str = "refuse", threads: int | None = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, direct: bool = True) -> pd.DataFrame:
    """One row per (layer, module): cosine(dW_a, dW_b), jaccard of the update masks and its random baseline, the
    masks' densities, and the sums `summarize` pools. dW_x = W_x - W_base, the base in run x's dtype; with
    `base_b_dir`, run b's update is taken from that reference instead (two stages, each against its parent)."""
    _check_fraction("rtol", rtol)
    dirs, labels = [base_dir, run_a_dir, run_b_dir], ["base", "run a", "run b"]
    if base_b_dir is not None:
        dirs, labels = dirs + [base_b_dir], labels + ["run b's reference"]
    matrices = _matrices(dirs, labels, dtype_mismatch, tensor_mismatch)
    stats = _stream([group for _, _, group in matrices], lambda g: _AlignStats(rtol), threads, chunk_bytes,
                    direct)
    return pd.DataFrame([{"layer": layer, "module": module, **s.row()}
                         for (layer, module, _), s in zip(matrices, stats)])


# ---- spectra ------------------------------------------------------------------------------------------------------

def stable_rank(s: torch.Tensor) -> float:
    """||dW||_F^2 / ||dW||_2^2 from dW's singular values; NaN for dW = 0."""
    s = s.double()
    top = float(s.max()) if s.numel() else 0.0
    return float(s.square().sum()) / top ** 2 if top else float("nan")


def effective_rank(s: torch.Tensor) -> float:
    """exp(entropy of s / sum(s)) (Roy & Vetterli 2007); NaN for dW = 0."""
    s = s.double()
    total = float(s.sum())
    if not total:
        return float("nan")
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def spectral_shift(s_base: torch.Tensor, s_new: torch.Tensor) -> float:
    """||s(W') - s(W)||_2 / ||s(W)||_2, both spectra sorted descending."""
    s_base, s_new = s_base.double(), s_new.double()
    return float(torch.linalg.vector_norm(s_new - s_base) / torch.linalg.vector_norm(s_base))


def max_principal_angle(u: torch.Tensor, u_new: torch.Tensor) -> float:
    """Largest principal angle, in degrees, between the spans of two orthonormal bases of k columns:
    arcsin ||(I - U U^T) U'||_2, accurate for small angles (where arccos of the cosines is not)."""
    u, u_new = u.double(), u_new.double()
    residual = u_new - u @ (u.T @ u_new)
    sin = min(1.0, float(torch.linalg.matrix_norm(residual, ord=2)))
    return math.degrees(math.asin(sin))


def decompose(w: torch.Tensor, k: int, method: str = "full", niter: int = 4, oversample: int = 16):
    """(all singular values, top-k left vectors, top-k right vectors) of w.

    "lowrank" takes the vectors from torch.svd_lowrank (randomized subspace iteration, Halko, Martinsson & Tropp,
    arXiv 0909.4061, Alg. 5.1; q = k + oversample columns, niter power iterations), the values still from svdvals.
    It is not the default for a reason: on a 1024 x 2752 Gaussian matrix (flat spectrum, small gaps at k), the
    top-16 subspaces of W and of W + a 0.1% update come out 86 degrees apart where the exact angle is 0.53; with a
    decaying spectrum top-16 is right but top-64 reads 10.5 degrees for 0.27 (the benchmark's table,
    workflow/scripts/benchmark_weight_pass.py). float32 "full" agrees with float64 to a few thousandths of a
    degree."""
    if method == "full":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return s, u[:, :k].clone(), vh[:k].T.clone()  # clones: let the full factors go
    if method == "lowrank":
        q = min(k + oversample, *w.shape)
        u, _, v = torch.svd_lowrank(w, q=q, niter=niter)
        return torch.linalg.svdvals(w), u[:, :k].clone(), v[:, :k].clone()
    raise ValueError(f"svd method {method!r} is not one of {SVD_METHODS}")


def _spectral_row(w, w_new, base_parts, ks, method) -> dict:
    out = {"nss": 0.0, "stable_rank": float("nan"), "effective_rank": float("nan")}
    out |= {f"angle_{side}_k{k}": 0.0 for k in ks for side in ("left", "right")}
    if torch.equal(w, w_new):
        return out
    s, u, v = base_parts
    s_new, u_new, v_new = decompose(w_new, max(ks), method)
    s_delta = torch.linalg.svdvals(w_new - w)
    out.update(nss=spectral_shift(s, s_new), stable_rank=stable_rank(s_delta), effective_rank=effective_rank(s_delta))
    for k in ks:
        out[f"angle_left_k{k}"] = max_principal_angle(u[:, :k], u_new[:, :k])
        out[f"angle_right_k{k}"] = max_principal_angle(v[:, :k], v_new[:, :k])
    return out


def spectral_metrics(base_dir, checkpoints: Mapping[str, object], *, ks: Sequence[int] = KS, method: str = "full",
                     dtype_mismatch: str = "cast", tensor_mismatch: str = "refuse",
                     precision: torch.dtype = torch.float32,
                     direct: bool = True) -> pd.DataFrame:
    """One row per (checkpoint label, layer, module): nss, stable_rank, effective_rank, angle_{left,right}_k{k}.

    One matrix in memory at a time (base and one checkpoint, in `precision`); the base is decomposed once per
    matrix for all checkpoints. k larger than the matrix's smaller side is an error."""
    if method not in SVD_METHODS:
        raise ValueError(f"svd method {method!r} is not one of {SVD_METHODS}")
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, not {ks}")
    labels = list(checkpoints)
    matrices = _matrices([base_dir, *checkpoints.values()], ["base", *labels], dtype_mismatch, tensor_mismatch)
    for _, _, (entry, *_) in matrices:
        if ks[-1] > min(entry.shape):
            raise ValueError(f"{entry.name}: k = {ks[-1]} exceeds its shape {list(entry.shape)}")
    rows = []
    with ChunkReader(direct=direct, streams=1) as reader:
        for layer, module, (base_entry, *entries) in matrices:
            base = reader.read(base_entry)
            parts: dict[torch.dtype, tuple] = {}  # the base's decomposition per compared dtype
            for label, entry in zip(labels, entries):
                w = base.to(entry.torch_dtype).to(precision)
                if entry.torch_dtype not in parts:
                    parts[entry.torch_dtype] = decompose(w, ks[-1], method)
                w_new = reader.read(entry).to(precision)
                rows.append({"checkpoint": label, "layer": layer, "module": module,
                             **_spectral_row(w, w_new, parts[entry.torch_dtype], ks, method)})
    return pd.DataFrame(rows)


# ---- command line -------------------------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("weights", help="weight analyses of checkpoints against the base",
                               description="Weight analyses per layer x module: `update` (sparsity, where updates "
                                           "land, relative update) and `spectral` (spectral shift, principal angles, "
                                           "rank of the update) of a run's checkpoints against the base; `align` "
                                           "(cosine and update-mask overlap) of two runs' checkpoints.")
    sub = ap.add_subparsers(dest="pass_", required=True, metavar="PASS")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base", required=True, nargs="+",
                        help="HF model folder of the reference (the base model, or another run's checkpoint); for "
                             "align, a second folder is run b's reference where it is not run a's")
    common.add_argument("--out", required=True, help="parquet file to write")
    common.add_argument("--dtype-mismatch", choices=DTYPE_POLICIES, default="cast",
                        help="a base stored in another dtype than the checkpoint: cast it to the checkpoint's, or "
                             "refuse")
    common.add_argument("--tensor-mismatch", choices=TENSOR_POLICIES, default="refuse",
                        help="a matrix missing on one side or of another shape: refuse, or analyse the shared ones")
    common.add_argument("--buffered", action="store_true", help="read through the page cache (default: O_DIRECT)")
    upd = sub.add_parser("update", parents=[common], help="sparsity, where updates land, relative update")
    upd.add_argument("--checkpoint", required=True, help="HF model folder of the checkpoint")
    upd.add_argument("--run", required=True)
    upd.add_argument("--step", required=True, type=int)
    upd.add_argument("--alpha", type=float, default=ALPHA)
    upd.add_argument("--rtol", type=float, default=RTOL)
    aln = sub.add_parser("align", parents=[common], help="cosine and mask overlap of two runs' updates")
    for side in ("a", "b"):
        aln.add_argument(f"--checkpoint-{side}", required=True, help=f"HF model folder of checkpoint {side}")
        aln.add_argument(f"--run-{side}", required=True)
        aln.add_argument(f"--step-{side}", required=True, type=int)
    aln.add_argument("--rtol", type=float, default=RTOL)
    spe = sub.add_parser("spectral", parents=[common], help="spectral shift, principal angles, rank of the update")
    spe.add_argument("--run", required=True)
    spe.add_argument("--checkpoint", required=True, action="append", metavar="STEP=DIR",
                     help="a checkpoint of the run and its step; repeat it: the base is decomposed once for all")
    spe.add_argument("--ks", type=int, nargs="+", default=list(KS))
    spe.add_argument("--method", choices=SVD_METHODS, default="full")
    ap.set_defaults(func=main, parser=ap)


def _steps(ap, pairs: list[str]) -> dict[int, str]:
    out = {}
    for pair in pairs:
        step, sep, folder = pair.partition("=")
        if not sep or not step.isdigit():
            ap.error(f"--checkpoint {pair}: expected STEP=DIR (STEP an integer)")
        out[int(step)] = folder
    return out


def main(args) -> None:
    common = {"dtype_mismatch": args.dtype_mismatch, "tensor_mismatch": args.tensor_mismatch,
              "direct": not args.buffered}
    if len(args.base) > 1 and args.pass_ != "align" or len(args.base) > 2:
        args.parser.error(f"--base: {len(args.base)} folders; only align takes a second (run b's reference)")
    base_b = args.base[1] if len(args.base) == 2 else None
    args.base = args.base[0]
    if args.pass_ == "update":
        check_safetensors(args.base)
        check_safetensors(args.checkpoint)
        df = update_metrics(args.base, args.checkpoint, alpha=args.alpha, rtol=args.rtol, **common)
        df.insert(0, "step", args.step)
        df.insert(0, "run", args.run)
    elif args.pass_ == "align":
        for folder in (args.base, args.checkpoint_a, args.checkpoint_b, *([base_b] if base_b else [])):
            check_safetensors(folder)
        df = run_alignment(args.base, args.checkpoint_a, args.checkpoint_b, base_b_dir=base_b, rtol=args.rtol,
                           **common)
        for i, col in enumerate(("run_a", "step_a", "run_b", "step_b")):
            df.insert(i, col, getattr(args, col))
    else:
        checkpoints = _steps(args.parser, args.checkpoint)
        for folder in (args.base, *checkpoints.values()):
            check_safetensors(folder)
        df = spectral_metrics(args.base, checkpoints, ks=args.ks, method=args.method, **common)
        df = df.rename(columns={"checkpoint": "step"})
        df.insert(0, "run", args.run)
    write_parquet(df, args.out)

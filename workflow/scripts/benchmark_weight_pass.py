"""Cost of scalpel.analysis.weights at 7B: a bf16 pair (OLMo-2-1124-7B shapes, random weights, a known
perturbation: every 3rd element of each projection moved one bf16 ulp) against a raw read of the same files.

RESULTS 2026-12-07, quiet (the same VM, nothing else running; `--with-diff --pass-threads 2 1 2`, commit 7ca9a59):
raw parallel read 20.4 s buffered, 22.4 s direct; the pass 18.0 s and 20.1 s at two threads, 19.8 s at one
(0.88-0.98x the buffered read, 0.80-0.89x the direct one), 21.2-22.9 CPU-s, 0.54-0.58 GiB peak RSS.

RESULTS 2026-12-07 (a 2-core "AMD EPYC" VM, the same RAM, disk and torch, load average 6-13 from other jobs; page
cache dropped before every timing): one pass now gives the update table and diff's (diff no longer reads the
pair), 24.1-26.4 CPU-s, 0.50-0.57 GiB peak RSS; at two threads 29.0 s wall, 1.12x the 25.9 s `dd iflag=direct`
of the same run (load 7.5), and 30.1-47.7 s (1.26-2.0x) in other timings under load 7.6-10; the pass before it
took 31.7-33.3 CPU-s here.
diff's table equals its former float64 arithmetic (old_diff) to 9e-16 relative. SVD seconds per matrix at 1 and 2
threads (quiet: 2 threads halve the wall time at the same CPU seconds; under load they looked slower): README,
"Cost of the weight analyses at 7B, measured".

RESULTS (2026-12-01; a 2-core "Intel Xeon Processor" VM, AVX-512, 23.5 GiB RAM, ext4 on virtio, torch 2.13.0+cpu,
shared with three other agents: load average 4-10 throughout, so wall times are the scheduler's as much as ours;
CPU seconds are the steadier measure. Page cache dropped before every timing.)
Pair: 2 x 13.6 GiB (29.2 GB), 224 projection matrices = 6.47e9 element pairs read of 7.3e9.
                                     wall s   CPU s   peak RSS (anon + file)   vs raw read (buffered dd)
  raw read, dd x 2 parallel          30.4     18.8    -                        1
  raw read, dd iflag=direct          27.6      1.3    -
  update_metrics (non-spectral)     116.3     54.1    0.52 GiB                 3.8 (load 7.3)
    again, raw read 38.1 s          101.8     44.3    0.51 GiB                 2.7 (load 3.8 -> 7)
    again, both at nice -10          90.3     38.6    0.51 GiB                 1.15 (raw 78.5 s: the disk was busy too)
  run_alignment, 3 folders          115.6     52.2    0.52 GiB                 1.35 (raw 3 x dd 85.9 s; direct 43.5 s)
  diff.relative_updates (mmap), from the research notes: about 3x the raw read, 22-23 GiB RSS (1 layer here: 4.5 s,
    1.3 GiB, against 1.1 s and 0.47 GiB for update_metrics).
(The first two update runs and the alignment run split each chunk across the two threads with a barrier; the
nice -10 run is the committed code, where each thread takes whole chunks as they come.)
The pass is CPU-bound here: 39-54 CPU-s for 6.47e9 pairs (6-8 ns a pair; the O_DIRECT reads cost ~1 CPU-s, where
buffered reads cost dd 19). Projected for two cores of its own: ~20-27 s of compute overlapping ~28 s of reading,
within 2x of the raw read; measured on this shared VM it met 2x in one run of three. Memory meets the 4 GiB bound
eight times over (no mmap, no page cache: O_DIRECT into reused buffers).

Spectral metrics, float32, one thread (MKL with 2 threads under this load was 10-20x slower: keep
OMP_NUM_THREADS at the cores a job owns), CPU seconds per matrix:
                     svdvals   full SVD (decompose)   svd_lowrank k=64 (+ svdvals)
  4096 x 4096          3.2         14.9                    3.5
  11008 x 4096         6.7         22.5                    7.9
spectral_metrics end to end on one 7B layer (base + one checkpoint, 7 matrices): 354 CPU-s (455 s wall), 1.41 GiB
peak RSS. At 32 layers: the base's SVDs ~68 CPU-min once, then ~85-120 CPU-min per checkpoint (SVD of W',
svdvals of dW): about 3 h for the base and one checkpoint on one core of this CPU.
svd_lowrank's subspaces are not usable (1024 x 2752, q = k + 16, 4 power iterations; largest principal angle
between the top-k subspaces of W and W + a random update, degrees):
  spectrum   update   k=16: float64  float32  lowrank     k=64: float64  float32  lowrank
  flat       1e-3            0.531    0.530    86.1              0.862    0.853    89.3
  flat       3e-2           13.12    13.12     89.5             17.28    17.28     89.8
  decaying   1e-3            0.0260   0.0262    0.0261           0.265    0.266    10.5
  decaying   3e-2            0.838    0.838     0.838            5.754    5.753    12.9
float32 is as good as float64 for the angles and for nss down to ~1e-6 (nss 2.6e-7 vs 1.9e-7 at a 1e-5 update).
Recommendation: spectral metrics for the final checkpoint of each run, all finals in one spectral_metrics call
(the base is decomposed once): a CPU job of 16 cores, 8 GB, 4 h (not measured at 16 threads; one core: 5-7 h for
the base and three finals), or a GPU job (cuSOLVER; not measured here). The streamed passes fit a 1-2 core,
2 GB job for every checkpoint.

Usage (not part of CI; writes 13.6 GiB per checkpoint under --root, deleted unless --keep):
    python workflow/scripts/benchmark_weight_pass.py --root /tmp/wbench7b --with-align    # full 32 layers
    python workflow/scripts/benchmark_weight_pass.py --root /tmp/wbench7b --with-diff --pass-threads 2 1
    python workflow/scripts/benchmark_weight_pass.py --root /tmp/none --no-pair --spectral-threads 1 2
    python workflow/scripts/benchmark_weight_pass.py --root /tmp/wb1 --layers 1 --spectral-pass 1
    python workflow/scripts/benchmark_weight_pass.py --root /tmp/x --layers 1 --spectral-threads 1 --lowrank-error
    python workflow/scripts/benchmark_weight_pass.py --root /q --layers 1 --shrink 64 --with-diff --with-align --warm
(the last, seconds: what tests/test_scripts.py runs, checking the values, not the times)
Dropping the page cache before each timing needs root (`sync; echo 3 > /proc/sys/vm/drop_caches`); without it
the report says cache_dropped: false and the reads are warm.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow"))

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 4096, 11008, 100352, 32  # allenai/OLMo-2-1124-7B config.json
SHARD_BYTES = 5 << 30


def module_shapes(shrink: int = 1) -> dict[str, tuple[int, int]]:
    """The 7B's projection shapes, every dimension divided by `shrink` (1: the real sizes; more: a quick check)."""
    h, i = HIDDEN // shrink, INTERMEDIATE // shrink
    return {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h), "gate_proj": (i, h),
            "up_proj": (i, h), "down_proj": (h, i)}


def olmo2_tensors(layers: int, shrink: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    hidden, vocab = HIDDEN // shrink, VOCAB // shrink
    names = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        for m, shape in module_shapes(shrink).items():
            block = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            names.append((f"model.layers.{i}.{block}.{m}.weight", shape))
        for norm in ("self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm", "post_feedforward_layernorm"):
            names.append((f"model.layers.{i}.{norm}.weight", (hidden,)))
    names += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return names


def updated_positions(n: int, stride: int) -> int:
    return (n + stride - 1) // stride


def write_model(folder: Path, layers: int, stride: int | None, seed: int = 0, shrink: int = 1) -> None:
    """Sharded bf16 safetensors, written chunk by chunk (no shard held in memory). With `stride`, every stride-th
    element (flat index) of each projection matrix is moved one bf16 ulp up in bits, so the checkpoint's unchanged
    fraction is known exactly; everything else equals the base (same seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = olmo2_tensors(layers, shrink)
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map = {}
    gen = torch.Generator().manual_seed(seed)
    for s, shard in enumerate(shards):
        file = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in shard:
            nbytes = math.prod(shape) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(folder / file, "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)) + blob)
            for name, shape in shard:
                rows, cols = shape[0], math.prod(shape[1:])
                step = max(1, (16 << 20) // cols)
                for start in range(0, rows, step):
                    stop = min(rows, start + step)
                    chunk = (0.02 * torch.randn(stop - start, cols, generator=gen)).to(torch.bfloat16)
                    if stride and "_proj" in name:
                        flat = chunk.view(torch.int16).view(-1)
                        first = (-start * cols) % stride  # keeps the pattern on the matrix's flat index
                        flat[first::stride] += 1
                    fh.write(chunk.view(torch.uint8).numpy().tobytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


DROP_CACHES = True


def drop_caches() -> bool:
    if not DROP_CACHES:
        return False
    try:
        subprocess.run("sync", check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def raw_read(folders: list[Path], direct: bool = False) -> dict:
    """dd of every folder in parallel (one stream per folder, files one after another): wall seconds, and the CPU
    seconds dd spent (mostly the kernel's, copying through the page cache unless `direct`)."""
    flag = " iflag=direct" if direct else ""
    scripts = [f"for f in {folder}/*.safetensors; do dd if=$f of=/dev/null bs=16M{flag} status=none; done"
               for folder in folders]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["bash", "-c", s]) for s in scripts]
    if any(p.wait() for p in procs):
        raise RuntimeError("dd failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - t0, "load_before": os.getloadavg()[0],
            "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


def old_diff(base_dir, ckpt_dir, chunk_rows: int = 1024):
    """The relative updates as scalpel.analysis.diff computed them until it took the update pass's sums: per
    1024-row chunk, the base rounded to the checkpoint's dtype, both in float64, sum of squares; here read with
    ChunkReader, a matrix at a time, instead of mapped with safe_open. The reference the pass's table must equal."""
    import pandas as pd
    from scalpel.analysis.tensor_stream import ChunkReader
    from scalpel.analysis.weights import _matrices

    rows = []
    with ChunkReader(streams=1) as reader:
        for layer, module, (b_entry, c_entry) in _matrices([base_dir, ckpt_dir], ["base", "checkpoint"], "cast"):
            base, ckpt, dtype = reader.read(b_entry), reader.read(c_entry), c_entry.torch_dtype
            delta_sq = base_sq = 0.0
            for start in range(0, base.shape[0], chunk_rows):
                b = base[start:start + chunk_rows].to(dtype).to(torch.float64)
                d = ckpt[start:start + chunk_rows].to(torch.float64).sub_(b)
                delta_sq += float(d.square_().sum())
                base_sq += float(b.square_().sum())
            delta_norm, base_norm = delta_sq ** 0.5, base_sq ** 0.5
            rows.append({"layer": layer, "module": module, "rel_update": delta_norm / base_norm if base_norm
                         else float("nan"), "delta_norm": delta_norm, "base_norm": base_norm,
                         "dtype": str(dtype).removeprefix("torch."),
                         "reference_dtype": str(b_entry.torch_dtype).removeprefix("torch.")})
    return pd.DataFrame(rows)


def norm_arithmetic(rows: int = 1024, cols: int = 4096, reps: int = 5) -> dict:
    """CPU ns per element pair of ||new - base||^2 on a bf16 chunk, one thread, in the pass's 128K-element slices:
    float32 (row norms, summed in float64: the update pass until now) against float64 (the pass now, exact terms),
    and each one's relative error against the exact sum."""
    from scalpel.analysis.weights import SUBCHUNK_ELEMENTS

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    base = (0.02 * torch.randn(rows, cols, generator=gen)).to(torch.bfloat16)
    new = (base.float() + 1e-4 * torch.randn(rows, cols, generator=gen)).to(torch.bfloat16)
    exact = float((new.double() - base.double()).square().sum())
    step = max(1, SUBCHUNK_ELEMENTS // cols)
    slices = [(base[i:i + step], new[i:i + step]) for i in range(0, rows, step)]
    bufs = {dt: (torch.empty(step, cols, dtype=dt), torch.empty(step, cols, dtype=dt))
            for dt in (torch.float32, torch.float64)}

    def f32(b, c):
        x, y = bufs[torch.float32]
        d = torch.sub(y[:len(b)].copy_(c), x[:len(b)].copy_(b), out=y[:len(b)])
        return float(torch.linalg.vector_norm(d, dim=1).double().square().sum())

    def f64(b, c):
        x, y = bufs[torch.float64]
        d = torch.sub(y[:len(b)].copy_(c), x[:len(b)].copy_(b), out=y[:len(b)]).view(-1)
        return float(torch.dot(d, d))

    out = {}
    for label, fn in (("float32", f32), ("float64", f64)):
        total = sum(fn(b, c) for b, c in slices)
        c0 = time.process_time()
        for _ in range(reps):
            for b, c in slices:
                fn(b, c)
        out[label] = {"ns_per_pair": 1e9 * (time.process_time() - c0) / reps / base.numel(),
                      "rel_error": abs(total - exact) / exact}
    return out


CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {workflow!r})
import torch
from scalpel.analysis import weights
if {threads}:
    torch.set_num_threads({threads})
load = os.getloadavg()[0]
t0, c0 = time.perf_counter(), time.process_time()
df = {call}
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("VmHWM", "RssFile", "RssAnon")))
print(json.dumps({{"wall_s": seconds, "cpu_s": cpu, "load_before": load,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                  "status_at_end": {{k: v.strip() for k, v in status.items()}}}}))
df.to_pickle({table!r})
"""


def timed_child(call: str, threads: int = 0) -> dict:
    """Run `call` (a scalpel expression) in a fresh Python: wall and CPU seconds of the call, peak RSS of the
    process (ru_maxrss: anonymous and file-backed pages, what a memory-mapped read inflates), the result table."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as scratch:  # pickled: JSON would round the floats
        table = Path(scratch) / "table.pkl"
        code = CHILD.format(workflow=str(ROOT / "workflow"), call=call, threads=threads, table=str(table))
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result["table"] = pd.read_pickle(table)
    return result


def spectral_timings(threads: int) -> list[dict]:
    """CPU and wall seconds per 7B-shaped float32 matrix for what spectral_metrics does to each: decompose W'
    (full SVD, or svdvals + svd_lowrank) and svdvals(dW); the base is decomposed once for all checkpoints."""
    from scalpel.analysis import weights
    torch.set_num_threads(threads)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in [(HIDDEN, HIDDEN), (INTERMEDIATE, HIDDEN)]:
        w = 0.02 * torch.randn(*shape, generator=gen)
        for label, fn in [("svdvals", torch.linalg.svdvals),
                          ("decompose full k=64", lambda x: weights.decompose(x, 64, "full")),
                          ("decompose lowrank k=64", lambda x: weights.decompose(x, 64, "lowrank"))]:
            c0, t0 = time.process_time(), time.perf_counter()
            fn(w)
            rows.append({"shape": list(shape), "op": label, "threads": threads,
                         "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
            print(rows[-1], flush=True)
    return rows


def lowrank_error(m: int = 1024, n: int = 2752, seed: int = 0) -> list[dict]:
    """Largest principal angles (degrees) between the top-k subspaces of W and W' = W + a random update of relative
    size 1e-5 / 1e-3 / 3e-2, computed exactly (float64 full SVD), in float32 (full SVD) and with svd_lowrank; and
    the spectral shift in float64 and float32. W: Gaussian (flat spectrum) or with singular values divided by
    their rank (decaying). A 1024 x 2752 matrix: a quarter of an OLMo-2-7B MLP matrix per side."""
    from scalpel.analysis import weights
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spectrum in ("flat", "decaying"):
        w = torch.randn(m, n, generator=gen, dtype=torch.float64)
        if spectrum == "decaying":
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            w = u @ torch.diag(s / torch.arange(1, len(s) + 1, dtype=torch.float64)) @ vh
        for size in (1e-5, 1e-3, 3e-2):
            d = torch.randn(m, n, generator=gen, dtype=torch.float64)
            w_new = w + size * d * w.norm() / d.norm()
            parts = {"float64": [weights.decompose(x, 64, "full") for x in (w, w_new)],
                     "float32": [weights.decompose(x.float(), 64, "full") for x in (w, w_new)],
                     "lowrank": [weights.decompose(x.float(), 64, "lowrank") for x in (w, w_new)]}
            row = {"spectrum": spectrum, "rel_update": size,
                   "nss_float64": weights.spectral_shift(parts["float64"][0][0], parts["float64"][1][0]),
                   "nss_float32": weights.spectral_shift(parts["float32"][0][0], parts["float32"][1][0])}
            for k in (16, 64):
                for label, (a, b) in parts.items():
                    row[f"angle_k{k}_{label}"] = weights.max_principal_angle(a[1][:, :k], b[1][:, :k])
            out.append(row)
            print(row, flush=True)
    return out


def time_pair(args, report: dict, log) -> None:
    """Write the pair (and a second checkpoint with --with-align), time the raw reads and the passes, check values."""
    base, ckpt, other = args.root / "base", args.root / "ckpt_a", args.root / "ckpt_b"
    folders = [(base, None), (ckpt, args.stride)] + ([(other, 2 * args.stride)] if args.with_align else [])
    try:
        t0 = time.perf_counter()
        for folder, stride in folders:
            if not (folder / "model.safetensors.index.json").exists():
                write_model(folder, args.layers, stride, shrink=args.shrink)
        log("build_s", time.perf_counter() - t0)
        log("gib", {f.name: sum(p.stat().st_size for p in f.glob("*.safetensors")) / 2 ** 30 for f, _ in folders})
        log("cache_dropped", drop_caches())
        for direct in (False, True):
            drop_caches()
            log(f"raw_read_2{'_direct' if direct else ''}", raw_read([base, ckpt], direct))
        for threads in args.pass_threads:
            drop_caches()
            res = timed_child(f"weights.update_metrics({str(base)!r}, {str(ckpt)!r})", threads)
            df = res.pop("table")
            res["vs_raw_read"] = res["wall_s"] / report["raw_read_2"]["wall_s"]
            res["vs_raw_read_direct"] = res["wall_s"] / report["raw_read_2_direct"]["wall_s"]
            log(f"update_metrics_threads_{threads or torch.get_num_threads()}", res)
        known = {m: 1 - updated_positions(math.prod(s), args.stride) / math.prod(s)
                 for m, s in module_shapes(args.shrink).items()}
        log("update_unchanged_max_error", max(abs(r.unchanged_bitwise - known[r.module]) for r in df.itertuples()))
        log("update_overlap_top_range", [df.overlap_top.min(), df.overlap_top.max()])
        if args.with_diff:
            from scalpel.analysis.diff import diff_table

            ours, theirs = diff_table(df), old_diff(base, ckpt)
            log("diff_max_rel_difference_to_old_diff",
                {c: float(((ours[c] - theirs[c]).abs() / theirs[c]).max())
                 for c in ("rel_update", "delta_norm", "base_norm")})
            log("diff_columns_equal", list(ours.columns) == list(theirs.columns))
        if args.with_align:
            for direct in (False, True):
                drop_caches()
                log(f"raw_read_3{'_direct' if direct else ''}", raw_read([base, ckpt, other], direct))
            drop_caches()
            res = timed_child(f"weights.run_alignment({str(base)!r}, {str(ckpt)!r}, {str(other)!r})")
            al = res.pop("table")
            log("run_alignment", res)
            # B moves every 2s-th element, A every s-th: B's mask is half of A's (up to the ragged ends)
            log("align_jaccard_range", [al.jaccard.min(), al.jaccard.max()])
        if args.spectral_pass:
            res = timed_child(f"weights.spectral_metrics({str(base)!r}, {{'a': {str(ckpt)!r}}})", args.spectral_pass)
            sp = res.pop("table")
            res["matrices"] = len(sp)
            res["cpu_s_per_matrix_incl_base_svd"] = res["cpu_s"] / len(sp)
            log("spectral_metrics", res)
            log("spectral_nss_range", [sp.nss.min(), sp.nss.max()])
    finally:
        if not args.keep:
            for folder, _ in folders:
                shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="scratch folder (outside the repository)")
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--stride", type=int, default=3, help="checkpoint A updates every stride-th element")
    ap.add_argument("--with-diff", action="store_true",
                    help="check the pass's diff table against diff's former float64 arithmetic (old_diff)")
    ap.add_argument("--pass-threads", type=int, nargs="+", default=[0],
                    help="time the update pass with these compute threads (0: torch's default)")
    ap.add_argument("--no-pair", action="store_true", help="write and time no pair (for --spectral-threads alone)")
    ap.add_argument("--norm-arithmetic", action="store_true", help="float32 against float64 squared norms")
    ap.add_argument("--with-align", action="store_true", help="write a second checkpoint and time run_alignment")
    ap.add_argument("--spectral-threads", type=int, nargs="*", default=[], help="time the SVDs with these threads")
    ap.add_argument("--spectral-pass", type=int, default=0, metavar="THREADS",
                    help="time spectral_metrics on the pair with this many threads (use with --layers 1)")
    ap.add_argument("--lowrank-error", action="store_true", help="svd_lowrank and float32 against float64")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--shrink", type=int, default=1, help="divide every dimension by this (a quick check, not 7B)")
    ap.add_argument("--warm", action="store_true", help="leave the page cache alone (reads are warm)")
    ap.add_argument("--out", type=Path, help="write the report here (JSON)")
    args = ap.parse_args(argv)
    global DROP_CACHES
    DROP_CACHES = not args.warm
    if ROOT in args.root.resolve().parents:
        ap.error("--root must lie outside the repository")
    report = {"machine": {"cpus": os.cpu_count(), "cpu": next((line.split(":", 1)[1].strip() for line in
                          open("/proc/cpuinfo") if line.startswith("model name")), "?"),
                          "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "layers": args.layers, "shrink": args.shrink}

    def log(key, value):
        report[key] = value
        print(json.dumps({key: value}, default=str), flush=True)

    if not args.no_pair:
        time_pair(args, report, log)
    for threads in args.spectral_threads:
        report.setdefault("spectral", []).extend(spectral_timings(threads))
    if args.norm_arithmetic:
        log("norm_arithmetic", norm_arithmetic())
    if args.lowrank_error:
        report["lowrank_error"] = lowrank_error()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()

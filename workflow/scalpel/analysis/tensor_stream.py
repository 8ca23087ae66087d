"""Safetensors tensors read in row chunks with plain file reads, several files in lockstep.

No memory map: mapped file pages count in a process's resident memory (and in a Slurm job's memory limit), so a
pass over a 7B checkpoint through `safe_open` slices ends with the whole file resident. Here each file is read with
`os.preadv` into a few reused buffers, the next chunk while the caller works on this one.

The format (huggingface/safetensors README, "Format"): an 8-byte little-endian unsigned header size N; N bytes of
JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
"__metadata__"); then the data, row-major and little-endian, offsets counted from byte 8 + N.
"""
from __future__ import annotations

import json
import math
import os
import queue
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie: `offset` is absolute in `file`."""
    name: str
    file: Path
    dtype: str  # the safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:]) if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.cols * self.torch_dtype.itemsize


def read_header(path) -> dict[str, TensorEntry]:
    """Every tensor of one safetensors file, from its header alone; a malformed header raises ValueError naming it."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors data is little-endian; this reader does not byte-swap")
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: header size {n} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(fh.read(n))
        except ValueError as err:
            raise ValueError(f"{path}: unreadable safetensors header ({err})") from None
    data_start = 8 + n
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets in the header") from None
        if dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which this reader does not know")
        entry = TensorEntry(name, path, dtype, shape, data_start + begin, end - begin)
        if entry.nbytes != math.prod(shape) * entry.torch_dtype.itemsize or begin < 0:
            raise ValueError(f"{path}: tensor {name!r} spans bytes [{begin}, {end}), not {dtype} x {list(shape)}")
        if entry.offset + entry.nbytes > size:
            raise ValueError(f"{path}: tensor {name!r} ends past the end of the file ({size} bytes): truncated")
        entries[name] = entry
    return entries


def model_tensors(model_dir) -> tuple[dict[str, TensorEntry], Path]:
    """Every tensor of an HF model folder (model.safetensors, or the shards its index names), and the file that
    lists them (for error messages)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index ({err!r})") from None
        entries = {}
        for file in sorted(set(weight_map.values())):
            if not (model_dir / file).is_file():
                raise FileNotFoundError(f"{index} names {file}, which {model_dir} lacks")
            headers = read_header(model_dir / file)
            for name, shard in weight_map.items():
                if shard == file:
                    if name not in headers:
                        raise ValueError(f"{index} puts {name} in {file}, whose header lacks it")
                    entries[name] = headers[name]
        return entries, index
    single = model_dir / SINGLE
    if single.is_file():
        return read_header(single), single
    raise FileNotFoundError(f"{model_dir}: neither {SINGLE} nor {INDEX}")


ALIGN = 4096  # O_DIRECT wants file offsets, lengths and buffer addresses aligned to the device's block size


def _read_exactly(fd: int, view: memoryview, offset: int, path: Path, needed: int | None = None) -> None:
    """Fill `view` from `offset`, or only its first `needed` bytes (the rest pads a direct read to whole blocks,
    past the end of the file for the last one); a file that ends before them is truncated."""
    needed = view.nbytes if needed is None else needed
    done = 0
    while done < needed:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise ValueError(f"{path}: ends at byte {offset + done}, before its header says: truncated")
        done += got


class ChunkReader:
    """Reads tensors, whole or as row chunks of several tensors in lockstep, into reused buffers.

    `direct`: read with O_DIRECT, around the page cache: no copy through the kernel's cache (on a 2-core VM a
    buffered read spends about a core-second per GB in the kernel; a direct one a tenth of that) and no cache left
    behind. A file system that refuses O_DIRECT (tmpfs, some network mounts) is read buffered. Use as a context
    manager.
    """

    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES, direct: bool = True, streams: int = 3):
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
        self.chunk_bytes, self.direct = chunk_bytes, direct and hasattr(os, "O_DIRECT")
        self._fds: dict[Path, tuple[int, bool]] = {}
        self._fds_lock = threading.Lock()
        self._retired: list[int] = []
        self._pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="chunk-reader")
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True)
        for fd in [fd for fd, _ in self._fds.values()] + self._retired:
            os.close(fd)
        self._fds.clear()
        self._retired.clear()
        self._buffers.clear()

    def _fd(self, path: Path) -> tuple[int, bool]:
        """An open file descriptor for `path`, and whether it reads O_DIRECT."""
        with self._fds_lock:
            return self._open(path)

    def _open(self, path: Path) -> tuple[int, bool]:
        if path not in self._fds:
            fd, direct = None, False
            if self.direct:
                try:
                    fd, direct = os.open(path, os.O_RDONLY | os.O_DIRECT), True
                except OSError:
                    pass
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            self._fds[path] = (fd, direct)
        return self._fds[path]

    def _buffer(self, key, nbytes: int) -> torch.Tensor:
        """A reused byte buffer (a fresh one for key None) of at least `nbytes` plus a block of slack at each end,
        its start aligned to ALIGN."""
        raw = self._buffers.get(key)
        if raw is None or raw.numel() < nbytes + 3 * ALIGN:
            raw = torch.empty(max(nbytes, self.chunk_bytes if key else 0) + 3 * ALIGN, dtype=torch.uint8)
            if key is not None:
                self._buffers[key] = raw
        pad = -raw.data_ptr() % ALIGN
        return raw[pad:]

    def _read_range(self, path: Path, offset: int, nbytes: int, buf: torch.Tensor) -> torch.Tensor:
        """Bytes [offset, offset + nbytes) of `path`, as a view into `buf`."""
        if not nbytes:
            return buf[:0]
        fd, direct = self._fd(path)
        if direct:
            lo = offset - offset % ALIGN
            hi = -(-(offset + nbytes) // ALIGN) * ALIGN
            try:
                _read_exactly(fd, memoryview(buf.numpy())[:hi - lo], lo, path, needed=offset + nbytes - lo)
                return buf[offset - lo:offset - lo + nbytes]
            except OSError:  # alignment refused after all: read this file buffered from now on
                with self._fds_lock:
                    if self._fds[path] == (fd, True):
                        self._fds[path] = (os.open(path, os.O_RDONLY), False)
                        self._retired.append(fd)  # another thread may still be reading it: close at exit
                    fd = self._fds[path][0]
        _read_exactly(fd, memoryview(buf.numpy())[:nbytes], offset, path)
        return buf[:nbytes]

    def _read_rows(self, entry: TensorEntry, start: int, stop: int, buf: torch.Tensor) -> torch.Tensor:
        """Rows [start, stop) of `entry` read into `buf`, as a (rows, cols) tensor of its dtype."""
        data = self._read_range(entry.file, entry.offset + start * entry.row_bytes, (stop - start) * entry.row_bytes,
                                buf)
        if data.storage_offset() % entry.torch_dtype.itemsize:  # a writer that did not align its tensors
            data = data.clone()
        return data.view(entry.torch_dtype).view(stop - start, entry.cols)

    def read(self, entry: TensorEntry) -> torch.Tensor:
        """The whole tensor, in a fresh (rows, cols) tensor of its dtype."""
        return self._read_rows(entry, 0, entry.rows, self._buffer(None, entry.nbytes))

    def _jobs(self, groups: Sequence[Sequence[TensorEntry]]):
        """(group, first row, end row) of every chunk: rows of `chunk_bytes` (of the widest tensor) at most."""
        for g, group in enumerate(groups):
            if len({e.rows for e in group}) != 1:
                raise ValueError("lockstep tensors differ in rows: "
                                 + ", ".join(f"{e.name} {list(e.shape)} in {e.file}" for e in group))
            step = max(1, self.chunk_bytes // max(e.row_bytes for e in group))
            for start in range(0, group[0].rows, step):
                yield g, start, min(start + step, group[0].rows)

    def _read_job(self, groups, job, slot) -> list:
        """Futures of the chunk of each tensor of a job, read in parallel into the buffers of `slot`."""
        g, start, stop = job
        return [self._pool.submit(self._read_rows, e, start, stop,
                                  self._buffer((slot, i), (stop - start) * e.row_bytes))
                for i, e in enumerate(groups[g])]

    def lockstep(self, groups: Sequence[Sequence[TensorEntry]]) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
        """For each group (tensors with the same number of rows, one per file), its rows chunk by chunk:
        (group index, first row, [chunk of each tensor]). A chunk is valid until the next one is asked for."""
        todo = self._jobs(groups)
        job = next(todo, None)
        pending, slot = ((job, self._read_job(groups, job, 0)) if job else None), 0
        while pending is not None:
            (g, start, _), futures = pending
            chunks = [f.result() for f in futures]
            job = next(todo, None)
            slot = 1 - slot  # read the next chunk into the other buffers while the caller uses these
            pending = (job, self._read_job(groups, job, slot)) if job else None
            yield g, start, chunks

    def for_each_chunk(self, groups: Sequence[Sequence[TensorEntry]], work: Callable, workers: int) -> None:
        """work(worker, group index, first row, [chunk of each tensor]) for every chunk of `lockstep`, on `workers`
        threads that take chunks as they come (no barrier between them), while the reads run ahead into
        workers + 2 buffer sets. The first exception raised by `work` stops the pass and is raised here."""
        slots = workers + 2
        free: queue.Queue = queue.Queue()
        for slot in range(slots):
            free.put(slot)
        ready: queue.Queue = queue.Queue()
        failed: list[BaseException] = []

        def produce():
            try:
                for job in self._jobs(groups):
                    slot = free.get()
                    if failed:
                        break
                    ready.put((slot, job, [f.result() for f in self._read_job(groups, job, slot)]))
            except BaseException as err:  # noqa: BLE001 - handed to the caller below
                failed.append(err)
            finally:
                for _ in range(workers):
                    ready.put(None)

        def consume(worker: int):
            while (item := ready.get()) is not None:
                slot, (g, start, _), chunks = item
                try:
                    if not failed:
                        work(worker, g, start, chunks)
                except BaseException as err:  # noqa: BLE001 - handed to the caller below
                    failed.append(err)
                finally:
                    free.put(slot)

        threads = [threading.Thread(target=produce, name="chunk-producer")]
        threads += [threading.Thread(target=consume, args=(w,), name=f"chunk-worker-{w}") for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise failed[0]

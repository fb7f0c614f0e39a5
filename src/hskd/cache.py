"""KnowledgeCache: the teacher's selected knowledge, extracted once and read back by example id.

Layout of a cache directory::

    manifest.json     fingerprint, spec, layer pairs, shapes, dtypes, sha256 of every array
    README.md         what the cache holds, in words (teacher, task, budget, storage, bytes, command)
    logits.npy        [rows, num_labels] float32
    hidden.npy        [rows, pairs, tokens, width] in the --storage (int8 default; see hskd.storage)
    hidden_scale.npy  [rows, pairs, tokens] or [rows, pairs, width] fp16 (int8 storages only)
    token_index.npy   [rows, pairs, tokens], -1 where a slot is unfilled (padding)
    dim_index.npy     [rows, pairs, tokens, width]           (magnitude width only)
    dims.npy          [width], once per cache                (uniform / random width)
    attentions.npy    [rows, pairs, heads, tokens, max_seq_length] float16 (if asked)

Indices use the smallest signed integer type that holds them (int8 up to 128 tokens).

Writes go to ``DIR.partial`` and are renamed to ``DIR`` once complete and checksummed; an
interrupted write resumes from the last flushed chunk, counted in rows (any batch size
resumes). Under ``torchrun`` each rank writes a
disjoint range of whole batches, so the result is identical to a one-process write. Readers
check the fingerprint (naming the field that differs), each array's size and sha256.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from hskd.cache_card import readme_text
from hskd.cache_reader import CacheReader, partial_dir, real_slots, refuse_uncacheable  # noqa: F401 - CacheReader re-exported
from hskd.device import is_main_process
from hskd.errors import HskdError
from hskd.files import read_json, write_atomic, write_json
from hskd.knowledge import Knowledge, KnowledgeSpec, Plan, extract
from hskd.models import model_inputs, needs_eager_attention
from hskd.selectors import SHARED_WIDTH, width_index
from hskd.storage import DEFAULT_STORAGE, array_dtype, encode, index_dtype, scale_shape
from hskd.tasks import sha256_file

FORMAT = 2  # 2: --storage, smallest index types, README.md


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank under torchrun; a no-op in a single process."""
    if _dist()[1] > 1:
        torch.distributed.barrier()


def write_cache(out_dir: str | Path, teacher, dataset, collator, plan: Plan,
                fingerprint: dict, sep_token_id: int | None, max_seq_length: int,
                batch_size: int = 64, flush_every: int = 16, stop_after_batches: int | None = None,
                progress: bool = True, environment: dict | None = None, storage: str = DEFAULT_STORAGE,
                command: str | None = None) -> dict:
    """Run the teacher once over ``dataset`` (tokenized, with ``example_id`` = row number) and
    store its selected knowledge. Resumes a ``DIR.partial`` left by an interrupted write.

    The teacher runs where it is (move it to the GPU, in its precision, first): selection
    runs there too, only the compact storage form is copied to pinned host memory, and a
    writer thread fills the memory-mapped arrays while the next batch is computed.

    Args:
        flush_every: batches per chunk; progress is durable at chunk boundaries.
        stop_after_batches: stop (raise ``KeyboardInterrupt``) after this many batches, to test
            resumption.
        environment: device, precision and versions, recorded in the manifest.
        storage: how the hidden values are stored (:mod:`hskd.storage`).
        command: the command line, recorded in the cache's README.md.

    Returns: the manifest.

    Raises:
        HskdError: a ``DIR.partial`` that belongs to a different fingerprint, or too little free
            disk space for the arrays (checked, and the blocks reserved, before any is written).
    """
    spec, pairs = plan.spec, list(plan.pairs)
    refuse_uncacheable(spec)
    out_dir = Path(out_dir)
    work = partial_dir(out_dir)
    rank, world = _dist()
    rows = len(dataset)
    teacher.eval()
    config = teacher.config
    needs_att = needs_eager_attention(spec, teacher.config)
    d, heads, labels = config.hidden_size, config.num_attention_heads, config.num_labels
    tokens = plan.tokens(max_seq_length)
    width = plan.width(d) if spec.hidden else 0
    shapes = array_shapes(spec, len(pairs), rows, labels, tokens, width, d, heads, max_seq_length, storage)
    header = {"format": FORMAT, "storage": storage, "fingerprint": fingerprint, "spec": spec.to_dict(),
              "pairs": [list(p) for p in pairs], "rows": rows, "teacher_hidden": d,
              "teacher_heads": heads, "teacher_layers": config.num_hidden_layers,
              "num_labels": labels, "max_seq_length": max_seq_length, "batch_size": batch_size,
              "arrays": {k: {"shape": list(s), "dtype": t} for k, (s, t) in shapes.items()}}

    if is_main_process():
        plan_file = work / "plan.json"
        if plan_file.exists():
            interrupted = read_json(plan_file, "pass --overwrite to start the cache again")
            if isinstance(interrupted.get("spec"), dict):  # written before a later spec field: its default
                interrupted["spec"] = KnowledgeSpec.from_dict(interrupted["spec"]).to_dict()
            if {**interrupted, "batch_size": batch_size} != header:
                raise HskdError(f"{work} holds an interrupted cache of different settings; delete it "
                                "or pass --overwrite")
        else:
            _allocate(work, shapes)
            if spec.hidden and spec.width in SHARED_WIDTH:  # shared dims, known up front
                np.save(work / "dims.npy", width_index(spec, torch.empty(d)).numpy().astype(index_dtype(d - 1)))
            write_json(plan_file, header)
    barrier()
    # progress is counted in rows, so a resume may use any batch size; the first write's batch
    # size fixes each rank's range of rows (whole batches, as a one-process write makes them)
    shard = read_json(work / "plan.json", "pass --overwrite to start the cache again")["batch_size"]
    header["batch_size"] = shard
    arrays = {name: np.load(work / f"{name}.npy", mmap_mode="r+") for name in shapes}
    n_batches = (rows + shard - 1) // shard
    first_row = min(rows, rank * n_batches // world * shard)
    end_row = min(rows, (rank + 1) * n_batches // world * shard)
    progress_file = work / f"progress.rank{rank}of{world}.json"
    done = _rows_done(progress_file, shard)
    device = next(teacher.parameters()).device
    start_time, seen = time.perf_counter(), 0
    bar = None
    if progress and is_main_process():
        from tqdm.auto import tqdm

        bar = tqdm(desc="caching", initial=done, total=end_row - first_row, unit="ex")
    writer = _Writer(arrays, progress_file, flush_every, first_row, end_row, row_scale=storage == "int8")
    try:
        for step, lo in enumerate(range(first_row + done, end_row, batch_size), start=1):
            hi = min(end_row, lo + batch_size)
            batch = collator([dataset[i] for i in range(lo, hi)])
            inputs = {k: _to_device(batch[k], device) for k in ("input_ids", "attention_mask", "token_type_ids")
                      if k in batch}
            with torch.inference_mode():
                out = teacher(**model_inputs(inputs, teacher),
                              output_hidden_states=spec.hidden or spec.attention_scores, output_attentions=needs_att)
                k = extract(plan, out, inputs, sep_token_id, teacher=teacher)
                host = _to_host(_storage_tensors(k, spec, storage, shapes))
            writer.put(step, lo, hi, host)  # the copy and the write overlap the next batch
            seen += hi - lo
            if bar is not None:
                bar.update(hi - lo)
            if stop_after_batches is not None and step >= stop_after_batches:
                writer.close()
                raise KeyboardInterrupt(f"stopped after {step} batches (test hook)")
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start_time
    for arr in arrays.values():
        arr.flush()
    del arrays
    barrier()
    manifest = dict(header)
    if is_main_process():
        timing = {"extract_seconds": seconds, "extract_examples_per_second": seen / seconds if seconds else None,
                  "resumed_at_row": done or None}  # the timing covers this process's rows only
        manifest = _finalise(work, out_dir, header, dataset, {**timing, "environment": environment,
                                                              "command": command})
    barrier()
    return manifest


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def array_shapes(spec: KnowledgeSpec, pairs: int, rows: int, labels: int, tokens: int, width: int,
                 hidden_size: int, heads: int, max_seq_length: int, storage: str = DEFAULT_STORAGE) -> dict:
    """The cache's arrays: ``{name: (shape, numpy dtype name)}`` (``dims.npy``, a few bytes, is
    not counted). The planner (:mod:`hskd.planner`) and the writer both use this."""
    shapes = {"logits": ((rows, labels), "float32")}
    if spec.hidden or spec.attentions:
        shapes["token_index"] = ((rows, pairs, tokens), index_dtype(max_seq_length - 1))
    if spec.hidden:
        shapes["hidden"] = ((rows, pairs, tokens, width), array_dtype(storage))
        scale = scale_shape(storage, (rows, pairs, tokens, width))
        if scale is not None:
            shapes["hidden_scale"] = (scale, "float16")
        if spec.width == "magnitude":
            shapes["dim_index"] = ((rows, pairs, tokens, width), index_dtype(hidden_size - 1))
    if spec.attentions:
        shapes["attentions"] = ((rows, pairs, heads, tokens, max_seq_length), "float16")
    return shapes


def _storage_tensors(k: Knowledge, spec: KnowledgeSpec, storage: str, shapes: dict) -> dict[str, torch.Tensor]:
    """A batch's knowledge in the cache's dtypes, still on the device (so that only the
    compact form crosses to the host): logits fp32, token indices with -1 in unfilled slots,
    hidden values encoded in ``storage`` with zeros there, attentions fp16."""
    out = {"logits": k.logits.float()}
    if k.token_index is not None:
        kind = getattr(torch, shapes["token_index"][1])
        out["token_index"] = torch.where(k.token_mask, k.token_index, torch.full_like(k.token_index, -1)).to(kind)
    if k.hidden is not None:
        out.update(encode(k.hidden, storage))
        if spec.width == "magnitude":
            out["dim_index"] = k.dim_index.to(getattr(torch, shapes["dim_index"][1]))
    if k.attentions is not None:
        out["attentions"] = k.attentions.to(torch.float16)
    return out


def _to_host(tensors: dict[str, torch.Tensor]) -> dict:
    """Start copying to pinned host memory without waiting (CUDA); returns the host tensors and
    the event that marks the copies done. On the CPU, the tensors themselves."""
    first = next(iter(tensors.values()))
    if first.device.type != "cuda":
        return {"tensors": tensors, "event": None}
    host = {}
    for name, t in tensors.items():
        host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host[name].copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return {"tensors": host, "event": event}


def _rows_done(progress_file: Path, shard: int) -> int:
    """Rows of this rank's range that are durably written (0 for a new write)."""
    if not progress_file.exists():
        return 0
    progress = read_json(progress_file, "pass --overwrite to start the cache again")
    if "rows_done" in progress:
        return progress["rows_done"]
    return progress["batches_done"] * shard  # written by hskd 0.1 before progress was in rows


def _allocate(work: Path, shapes: dict) -> None:
    """Create the arrays of a new cache in ``work`` with their disk blocks reserved.

    Reserving the blocks (``posix_fallocate``) makes a full disk fail here, in one line, and not
    later as a ``SIGBUS`` when a write lands on a memory-mapped page with no block behind it.

    Raises:
        HskdError: not enough free space (the sizes are named); nothing is left behind.
    """
    need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    try:
        if need > free:
            raise OSError(errno.ENOSPC, "no space")
        for name, (shape, dtype) in shapes.items():
            file = work / f"{name}.npy"
            open_memmap(file, mode="w+", dtype=dtype, shape=shape).flush()
            if hasattr(os, "posix_fallocate"):
                with open(file, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, file.stat().st_size)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno != errno.ENOSPC:
            raise HskdError(f"cannot write the cache in {work} ({exc.strerror}); choose another --output-dir") from None
        raise HskdError(f"the cache needs {need / 2**20:,.1f} MiB but {work.parent} has {free / 2**20:,.1f} MiB free; "
                        "free some space, choose another --output-dir, or a smaller --knowledge budget") from None


class _Writer:
    """Writes extracted batches into the memory-mapped arrays from a thread, so that the
    teacher's next forward pass runs while this batch is copied and written. Progress is made
    durable (arrays flushed, then the progress file replaced) every ``flush_every`` batches and
    at the last one, in batch order, exactly as a synchronous write would. A failure in the
    thread is raised in the caller at its next ``put`` or at ``close``."""

    def __init__(self, arrays: dict, progress_file: Path, flush_every: int, first_row: int, end_row: int,
                 row_scale: bool = False):
        import queue
        import threading

        self.arrays, self.progress_file = arrays, progress_file
        self.flush_every, self.first_row, self.end_row = flush_every, first_row, end_row
        self.row_scale = row_scale
        self.queue: queue.Queue = queue.Queue(maxsize=4)  # bounds the pinned memory in flight
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="hskd-cache-writer", daemon=True)
        self.thread.start()

    def put(self, step: int, lo: int, hi: int, host: dict) -> None:
        if self.error is not None:
            self.close()
        self.queue.put((step, lo, hi, host))

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure; the caller re-raises it
            try:
                self._write(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = exc

    def _write(self, step: int, lo: int, hi: int, host: dict) -> None:
        if host["event"] is not None:
            host["event"].synchronize()
        t = {name: v.numpy() for name, v in host["tensors"].items()}
        arrays = self.arrays
        arrays["logits"][lo:hi] = t["logits"]
        if "token_index" in t:
            n = t["token_index"].shape[-1]
            arrays["token_index"][lo:hi] = -1
            arrays["token_index"][lo:hi, :, :n] = t["token_index"]
        if "hidden" in t:
            arrays["hidden"][lo:hi] = 0
            arrays["hidden"][lo:hi, :, :n] = t["hidden"]
            if "dim_index" in t:
                arrays["dim_index"][lo:hi, :, :n] = t["dim_index"]
        if "hidden_scale" in t:
            arrays["hidden_scale"][lo:hi] = 0
            if self.row_scale:  # a scale per token row, else one per dimension
                arrays["hidden_scale"][lo:hi, :, :n] = t["hidden_scale"]
            else:  # a scale per dimension
                arrays["hidden_scale"][lo:hi] = t["hidden_scale"]
        if "attentions" in t:
            arrays["attentions"][lo:hi] = 0
            seq = t["attentions"].shape[-1]
            arrays["attentions"][lo:hi, :, :, :n, :seq] = t["attentions"]
        if step % self.flush_every == 0 or hi == self.end_row:
            for arr in arrays.values():
                arr.flush()
            write_json(self.progress_file, {"rows_done": hi - self.first_row})


def _finalise(work: Path, out_dir: Path, header: dict, dataset, extra: dict | None = None) -> dict:
    """Checksum the arrays, write the manifest (with ``extra``: timing, environment, command)
    and the README.md, and rename ``DIR.partial`` to ``DIR``."""
    manifest = dict(header)
    manifest.update({k: v for k, v in (extra or {}).items() if v is not None})
    for name, info in manifest["arrays"].items():
        info["sha256"] = sha256_file(work / f"{name}.npy")
        info["bytes"] = (work / f"{name}.npy").stat().st_size
    if (work / "dims.npy").exists():
        dims = np.load(work / "dims.npy")
        manifest["arrays"]["dims"] = {"shape": list(dims.shape), "dtype": str(dims.dtype),
                                      "sha256": sha256_file(work / "dims.npy"),
                                      "bytes": (work / "dims.npy").stat().st_size}
    manifest.update(size_report(work, manifest, dataset))
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(work / "manifest.json", manifest)
    write_atomic(work / "README.md", readme_text(manifest))
    for f in work.glob("progress.*"):
        f.unlink()
    (work / "plan.json").unlink()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    return manifest


def size_report(folder: Path, manifest: dict, dataset) -> dict:
    """Cache size on disk and its fraction of the full HSK.

    The full HSK is what TinyBERT distils for this student and data: every layer of the uniform
    map (student depth + 1, embedding included), every real token, every dimension, in fp16.
    ``hsk_fraction`` counts the hidden values actually kept at real tokens over the full HSK's
    values: unfilled slots, and the padding slots ``--hsk-padding include`` stores, are left out,
    so it never passes 1. ``bytes_fraction`` compares whole files, indices and padding included.
    """
    total = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".npy")
    lengths = np.asarray(dataset["length"], dtype=np.int64)
    tokens = int(lengths.sum())
    pairs_top = max((s for s, _ in manifest["pairs"]), default=0)
    n_student = manifest["fingerprint"].get("student_layers", pairs_top)  # skip/last maps stop below it
    full_values = (n_student + 1) * tokens * manifest["teacher_hidden"]
    kept = 0
    if "hidden" in manifest["arrays"]:
        index = np.load(folder / "token_index.npy", mmap_mode="r")
        kept = real_slots(index, lengths) * manifest["arrays"]["hidden"]["shape"][-1]
    return {"bytes": total, "megabytes": total / 2**20, "full_hsk_bytes": full_values * 2,
            "full_hsk_megabytes": full_values * 2 / 2**20,
            "hsk_fraction": kept / full_values if full_values else 0.0,
            "bytes_fraction": total / (full_values * 2) if full_values else 0.0}

"""``hskd cache --dry-run``: what a cache will cost before it is paid for.

The bytes are computed from the same array shapes and dtypes the writer allocates
(:func:`hskd.cache.array_shapes`) plus numpy's file headers, so they equal the cache's
``bytes`` exactly (the test allows 2 %). The kept fraction of the HSK counts each example's
filled token slots from its real length; the extraction time is extrapolated from a few timed
teacher batches spread over the training set.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import dtype_to_descr, write_array_header_1_0

from hskd.cache import array_shapes
from hskd.data import Collator, knowledge_pad_to
from hskd.device import precision_dtype
from hskd.knowledge import KnowledgeSpec, extract
from hskd.models import model_inputs, needs_eager_attention
from hskd.selectors import SHARED_WIDTH, width_index
from hskd.storage import index_dtype

GROUPS = {"logits": "logits", "hidden": "values", "hidden_scale": "values", "attentions": "values",
          "token_index": "indices", "dim_index": "indices", "dims": "indices"}


def npy_bytes(shape: tuple, dtype: str) -> int:
    """Size of a ``.npy`` file of this shape and dtype (header included), as numpy writes it."""
    header = io.BytesIO()
    write_array_header_1_0(header, {"descr": dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                                    "shape": tuple(int(x) for x in shape)})
    return len(header.getvalue()) + int(np.prod(shape)) * np.dtype(dtype).itemsize


def filled_tokens(spec: KnowledgeSpec, lengths: np.ndarray, n_sep: np.ndarray) -> np.ndarray:
    """Real-token slots each example fills (real tokens selected), per layer pair ``[rows]``.

    ``lengths`` are real-token counts, ``n_sep`` the [SEP] tokens of each example. A length
    strategy registered by a plugin is counted as ``min(k, length)``. Under ``padding:
    include`` padding ranks after every real token (and an excluded [SEP] is never valid), so
    the real tokens kept are the same as without it: the padding slots it stores are not
    counted here.
    """
    if spec.length == "cls":
        return np.ones_like(lengths)
    if spec.length == "all":
        return lengths
    if spec.length == "attention-no-sep":
        return np.minimum(spec.tokens, lengths - n_sep)
    return np.minimum(spec.tokens, lengths)


def plan_cache(s, job, device: torch.device, out: Path, timing_batches: int = 3) -> dict:
    """The cost of ``hskd cache`` with these settings, without writing anything.

    Args:
        job: the checked inputs (:func:`hskd.cache_job.prepare_cache_job`).
        timing_batches: teacher batches timed (after one warm-up) to estimate the extraction.

    Returns: ``{"arrays": {name: {"shape", "dtype", "bytes"}}, "groups": {values|indices|logits:
    bytes}, "bytes", "bytes_per_example", "full_hsk_bytes", "bytes_fraction", "hsk_fraction",
    "free_bytes", "free_at", "extract_seconds", "examples_per_second", ...}``; ``hskd cache
    --dry-run`` prints it with :func:`format_plan`.
    """
    plan, spec, config, ds = job.plan, job.plan.spec, job.teacher.config, job.dataset
    rows, d = len(ds), config.hidden_size
    width = plan.width(d) if spec.hidden else 0
    shapes = array_shapes(spec, len(plan.pairs), rows, config.num_labels, plan.tokens(job.max_len), width, d,
                          config.num_attention_heads, job.max_len, job.storage)
    if spec.hidden and spec.width in SHARED_WIDTH:
        dims = width_index(spec, torch.empty(d))
        shapes["dims"] = (tuple(dims.shape), index_dtype(d - 1))
    arrays = {name: {"shape": list(shape), "dtype": dtype, "bytes": npy_bytes(shape, dtype)}
              for name, (shape, dtype) in shapes.items()}
    groups: dict[str, int] = {}
    for name, info in arrays.items():
        groups[GROUPS.get(name, "values")] = groups.get(GROUPS.get(name, "values"), 0) + info["bytes"]
    total = sum(info["bytes"] for info in arrays.values())

    lengths = np.asarray(ds["length"], dtype=np.int64)
    sep = job.tokenizer.sep_token_id
    n_sep = np.array([sum(1 for t in ids if t == sep) for ids in ds["input_ids"]]) if sep is not None \
        else np.zeros_like(lengths)
    n_student = job.fingerprint["student_layers"]
    full_values = (n_student + 1) * int(lengths.sum()) * d
    kept = int(filled_tokens(spec, lengths, n_sep).sum()) * len(plan.pairs) * width if spec.hidden else 0
    where = out.parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    seconds_per_row, timed = _time_extraction(s, job, device, timing_batches)
    return {"task": job.fingerprint["task"], "rows": rows, "budget": spec.describe(), "storage": job.storage,
            "arrays": arrays, "groups": groups, "bytes": total, "bytes_per_example": total / rows,
            "full_hsk_bytes": full_values * 2, "bytes_fraction": total / (full_values * 2),
            "hsk_fraction": kept / full_values, "free_bytes": free, "free_at": str(where),
            "extract_seconds": seconds_per_row * rows, "examples_per_second": 1 / seconds_per_row,
            "timed_rows": timed, "device": str(device), "output_dir": str(out)}


def _time_extraction(s, job, device: torch.device, batches: int) -> tuple[float, int]:
    """Seconds per example of the teacher's forward pass and selection, from ``batches``
    batches of rows spread evenly over the training set (one untimed warm-up first)."""
    teacher = job.teacher.to(device=device, dtype=precision_dtype(s.bf16, s.fp16)).eval()
    spec = job.plan.spec
    rows, size = len(job.dataset), min(s.eval_batch_size, len(job.dataset))
    starts = np.linspace(0, rows - size, num=batches + 1).astype(int)
    collate = Collator(job.tokenizer, knowledge_pad_to(spec, job.max_len))
    seconds, timed = 0.0, 0
    for i, lo in enumerate(starts):
        batch = collate([job.dataset[int(j)] for j in range(lo, lo + size)])
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = teacher(**model_inputs(inputs, teacher), output_hidden_states=spec.hidden or spec.attention_scores,
                          output_attentions=needs_eager_attention(spec, teacher.config))
            k = extract(job.plan, out, inputs, job.tokenizer.sep_token_id, teacher=teacher)
            float(k.logits.sum())  # waits for the device
        if i:  # the first batch warms up
            seconds, timed = seconds + time.perf_counter() - t0, timed + size
    return seconds / max(timed, 1), timed


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def format_plan(p: dict) -> str:
    """The planner's table, as ``hskd cache --dry-run`` prints it."""
    rows = p["rows"]
    lines = [f"hskd cache --dry-run: {p['task']}, {rows:,} rows, {p['budget']}, {p['storage']} storage "
             f"-> {p['output_dir']} (nothing written)", "",
             "| part | per example | total |", "|---|---|---|"]
    for name in ("values", "indices", "logits"):
        if name in p["groups"]:
            lines.append(f"| {name} | {p['groups'][name] / rows:,.1f} B | {_size(p['groups'][name])} |")
    lines.append(f"| **total** | {p['bytes_per_example']:,.1f} B | **{_size(p['bytes'])}** |")
    enough = "enough" if p["free_bytes"] > p["bytes"] else "NOT enough: choose another --output-dir or a smaller budget"
    lines += ["",
              f"fraction of the full HSK: {p['bytes_fraction'] * 100:.3f} % of its bytes on disk "
              f"(full HSK {_size(p['full_hsk_bytes'])}); hidden values kept {p['hsk_fraction'] * 100:.3f} %",
              f"free space at {p['free_at']}: {_size(p['free_bytes'])} ({enough})",
              f"extraction: about {_duration(p['extract_seconds'])} at {p['examples_per_second']:,.1f} examples/s "
              f"({p['timed_rows']} rows timed on {p['device']})"]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

"""Settings turned into what the jobs need: layers, the device, the teacher's task, the
fingerprint a cache must match. Shared by every job (train, cache, evaluate, run)."""

from __future__ import annotations

import torch

from hskd import models
from hskd.config import Settings
from hskd.data import TaskData
from hskd.device import check_precision, environment, resolve_device
from hskd.errors import HskdError


def parse_layers(text) -> int | list[int] | None:
    """``"3"`` -> 3 (the first three layers); ``"0,2,4"`` -> [0, 2, 4]."""
    if text in (None, "", "all"):
        return None
    if isinstance(text, int):
        return text
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise HskdError(f"bad layer list {text!r}: write a count (3) or indices (0,2,4)") from None
    return parts[0] if len(parts) == 1 and "," not in str(text) else parts


def run_device(s: Settings) -> torch.device:
    """The device of this run (``--device`` or the accelerator), with its precision checked.

    Raises:
        HskdError: the device is not there, or cannot run ``--bf16``/``--fp16``.
    """
    device = resolve_device(s.device)
    check_precision(device, s.bf16, s.fp16)
    return device


def run_environment(s: Settings) -> dict:
    """Device, precision and versions, for ``config.yaml`` and ``hskd.json``."""
    return environment(resolve_device(s.device), s.bf16, s.fp16)


def with_changes(s: Settings, **changes) -> Settings:
    """A copy of the settings with some changed (test callbacks kept)."""
    data = s.to_yaml_dict()
    data.update(changes)
    copy = Settings(**data)
    copy.callbacks = s.callbacks
    return copy


def needs_eager(spec, model_path: str) -> bool:
    """Whether the teacher at ``model_path`` must run eager attention for ``spec``."""
    return models.needs_eager_attention(spec, models.load_config(model_path))


def student_depth(s: Settings) -> int:
    """The student's depth from ``--student-layers`` (or its backbone's)."""
    layers = parse_layers(s.student_layers)
    if isinstance(layers, list):
        return len(layers)
    if layers is None:
        return models.load_config(s.student_model).num_hidden_layers
    return layers


def cache_fingerprint(task, data: TaskData, tokenizer, max_len: int, teacher_dir: str | None) -> dict:
    """What a cache must agree with: task and labels, training data, tokenizer, max length
    (and, when known, the teacher's weights)."""
    fp = {"task": task.name, "labels": list(task.labels) if task.labels else None,
          "data_sha256": data.sources["train"]["sha256"], "rows": len(data.train),
          "tokenizer_sha256": models.vocab_fingerprint(tokenizer), "max_seq_length": max_len}
    if teacher_dir:
        fp["teacher_sha256"] = models.weights_fingerprint(teacher_dir)
    return fp

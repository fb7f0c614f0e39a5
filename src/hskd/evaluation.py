"""Evaluation: official dev metrics and inference throughput of a saved model, on the run's
device."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hskd import models
from hskd.config import Settings
from hskd.data import MODEL_INPUTS, Collator, load_data, max_length, tokenize
from hskd.device import device_description, precision_dtype, synchronize
from hskd.errors import HskdError
from hskd.job_inputs import run_device
from hskd.tasks import TaskData, compute_metrics


def evaluate_model(model_dir: str | Path, data: TaskData, s: Settings) -> dict:
    """Official dev metrics, dev inference examples/s, parameters and layers of a saved model.

    A plain inference loop in this process (batch ``eval_batch_size``, per-batch padding):
    under torchrun only rank 0 evaluates, on the whole dev set.
    """
    model_dir = Path(model_dir)
    device = run_device(s)
    model = models.load_classifier(str(model_dir), None).eval()
    models.check_labels(model, data.task, "model")
    model.to(device)
    # --bf16/--fp16 evaluate under autocast, as the Trainer's evaluation does
    autocast = torch.autocast(device.type, dtype=precision_dtype(s.bf16, s.fp16), enabled=s.bf16 or s.fp16)
    tok = models.load_tokenizer(str(model_dir))
    max_len = max_length(s, data)
    models.check_positions(model.config, max_len, "model")
    collate = Collator(tok)
    wall = time.perf_counter()
    splits, seconds, count = {}, 0.0, 0
    for name, split in data.dev.items():
        ds = tokenize(split, tok, max_len)
        logits, labels = [], []
        for lo in range(0, len(ds), s.eval_batch_size):
            batch = collate([ds[i] for i in range(lo, min(len(ds), lo + s.eval_batch_size))])
            synchronize(device)
            start = time.perf_counter()
            with torch.inference_mode(), autocast:
                out = model(**models.model_inputs({k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}, model))
                batch_logits = out.logits.float().cpu()  # waits for the device: the timing is complete
            seconds += time.perf_counter() - start
            logits.append(batch_logits.numpy())
            labels.append(batch["labels"].numpy())
        count += len(ds)
        splits[name] = compute_metrics(data.task, np.concatenate(logits), np.concatenate(labels))
    main = splits[next(iter(splits))][data.task.main_metric]
    return {"dev": splits, "main_metric": data.task.main_metric, "main_value": main,
            "eval_examples_per_second": count / seconds,
            "parameters": models.count_parameters(model), "layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size, "device": device_description(device),
            "eval_seconds": time.perf_counter() - wall}


def evaluate(s: Settings, model_dir: str) -> dict:
    """``hskd evaluate``: load a saved model and score it on the task's dev set(s)."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise HskdError(f"model directory not found: {path}")
    probe = models.load_classifier(str(path), None) if s.train_file or s.dataset else None
    data = load_data(s, labels_from_model=probe)
    return evaluate_model(path, data, s)

"""Dev-set inference throughput of saved models, measured back to back in one process.

Prints one table: examples/s (median of --repeats passes after one warm-up pass), parameters,
layers and the speed-up over the first model. Tokenization is done once, outside the timing;
batches are padded per batch (as `hskd evaluate` does).

    python bench/inference.py --task SST-2 --data-dir ../shared/data/glue runs/sst2/teacher runs/sst2/student

With --onnx, each model is also exported (``hskd.onnx_export``, into a temporary folder) and
onnxruntime's CPU throughput on the same batches is added next to PyTorch's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from hskd.config import Settings
    from hskd.data import Collator, tokenize
    from hskd.models import count_parameters, load_tokenizer, model_inputs
    from hskd.pipeline import load_data, max_length

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--task", default="SST-2")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx", action="store_true", help="add onnxruntime's CPU throughput")
    args = parser.parse_args()
    data = load_data(Settings(task=args.task, data_dir=args.data_dir))
    dev = next(iter(data.dev.values()))
    print(f"{args.task} dev: {len(dev)} examples; batch {args.batch_size}; {torch.get_num_threads()} threads\n")
    onnx_cols = " onnxruntime ex/s | onnxruntime / PyTorch |" if args.onnx else ""
    print("| model | layers | hidden | parameters | dev inference ex/s | speed-up |" + onnx_cols)
    print("|---|---|---|---|---|---|" + ("---|---|" if args.onnx else ""))
    base = None
    for path in args.models:
        tok = load_tokenizer(path)
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        ds = tokenize(dev, tok, max_length(Settings(), data))
        collate = Collator(tok)
        batches = [collate([ds[i] for i in range(lo, min(len(ds), lo + args.batch_size))])
                   for lo in range(0, len(ds), args.batch_size)]
        speeds = []
        with torch.inference_mode():
            for rep in range(args.repeats + 1):
                start = time.perf_counter()
                for b in batches:
                    model(**model_inputs({k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, model))
                if rep:  # the first pass warms up
                    speeds.append(len(ds) / (time.perf_counter() - start))
        speed = statistics.median(speeds)
        base = base or speed
        extra = ""
        if args.onnx:
            ort_speed = _onnxruntime_speed(path, batches, args.repeats)
            extra = f" {ort_speed:.1f} | {ort_speed / speed:.2f}x |"
        print(f"| {path} | {model.config.num_hidden_layers} | {model.config.hidden_size} "
              f"| {count_parameters(model) / 1e6:.1f}M | {speed:.1f} | {speed / base:.2f}x |" + extra, flush=True)


def _onnxruntime_speed(path: str, batches: list, repeats: int) -> float:
    """Examples/s of onnxruntime (CPU) on ``batches``: median of ``repeats`` after a warm-up."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnxruntime as ort

    from hskd.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(path, str(Path(tmp) / "onnx"))
        session = ort.InferenceSession(str(Path(tmp) / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feeds = [{k: b[k].numpy().astype(np.int64) for k in names} for b in batches]
        rows = sum(len(f["input_ids"]) for f in feeds)
        speeds = []
        for rep in range(repeats + 1):
            start = time.perf_counter()
            for f in feeds:
                session.run(None, f)
            if rep:
                speeds.append(rows / (time.perf_counter() - start))
    return statistics.median(speeds)


if __name__ == "__main__":
    main()

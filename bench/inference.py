"""Dev-set inference throughput of saved models, measured back to back in one process.

Prints one table: examples/s (median of --repeats passes after one warm-up pass), parameters,
layers and the speed-up over the first model. Tokenization is done once, outside the timing;
batches are padded per batch (as `hskd evaluate` does).

    python bench/inference.py --task SST-2 --data-dir ../shared/data/glue runs/sst2/teacher runs/sst2/student
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
    from hskd.models import count_parameters, load_tokenizer
    from hskd.pipeline import load_data, max_length

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--task", default="SST-2")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_data(Settings(task=args.task, data_dir=args.data_dir))
    dev = next(iter(data.dev.values()))
    print(f"{args.task} dev: {len(dev)} examples; batch {args.batch_size}; {torch.get_num_threads()} threads\n")
    print("| model | layers | hidden | parameters | dev inference ex/s | speed-up |\n|---|---|---|---|---|---|")
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
                    model(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
                if rep:  # the first pass warms up
                    speeds.append(len(ds) / (time.perf_counter() - start))
        speed = statistics.median(speeds)
        base = base or speed
        print(f"| {path} | {model.config.num_hidden_layers} | {model.config.hidden_size} "
              f"| {count_parameters(model) / 1e6:.1f}M | {speed:.1f} | {speed / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

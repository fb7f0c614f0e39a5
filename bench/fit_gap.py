"""How well do saved models fit the training set, against the dev set? A diagnostic for students
that fall below their baselines (docs/RESULTS.md: IRD trained to convergence on MRPC).

For each model directory it prints, on the task's training set (its first
``--max-train-samples`` rows if given) and its dev set, the task's
metrics and the share of examples predicted as label 1. With ``--teacher``, it also prints the
mean cosine between each student layer k's [CLS] hidden state and the teacher layer
``k * --stride``'s (Aguilar et al.'s [CLS] cosine term, measured with dropout off): a student
that matches the teacher much better on the training rows than on dev rows has learnt the
teacher's states of those rows rather than the teacher's function.

Usage: python bench/fit_gap.py --task MRPC --data-dir ../shared/data/glue [--teacher T --stride 2]
       [--max-train-samples N] MODEL [MODEL ...]
(MODEL: any saved classifier; bench/stage_student.py writes a run's student after one stage.)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from hskd import models
from hskd.data import Collator, tokenize
from hskd.tasks import compute_metrics, get_task, load_glue


def forward(path: str, split, max_len: int, batch_size: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """Logits ``[n, labels]`` and every layer's [CLS] state ``[n, layers + 1, hidden]`` of the
    model at ``path`` on ``split`` (a :class:`hskd.tasks.TaskData` split), in row order."""
    tokenizer = models.load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = tokenize(split, tokenizer, max_len)
    collate = Collator(tokenizer)
    logits, cls = [], []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate([rows[j] for j in range(i, min(i + batch_size, len(rows)))])
            batch.pop("labels"), batch.pop("example_id")
            out = model(**batch, output_hidden_states=True)
            logits.append(out.logits.float().numpy())
            cls.append(torch.stack([h[:, 0].float() for h in out.hidden_states], 1))
    return np.concatenate(logits), torch.cat(cls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--teacher", help="also measure each student layer's [CLS] cosine to this teacher")
    ap.add_argument("--stride", type=int, default=2, help="student layer k <- teacher layer k * stride (default 2)")
    ap.add_argument("--max-seq-length", type=int, help="default: 128 for pairs, 64 for single sentences")
    ap.add_argument("--max-train-samples", type=int, help="the first N training rows, as the run that trained the models")
    a = ap.parse_args()
    torch.set_num_threads(1)
    task = get_task(a.task)
    data = load_glue(task, a.data_dir, a.max_train_samples)
    splits = {"train": data.train, "dev": next(iter(data.dev.values()))}
    max_len = a.max_seq_length or (128 if "text_b" in data.train.column_names else 64)
    teacher = {s: forward(a.teacher, d, max_len)[1] for s, d in splits.items()} if a.teacher else None
    print("| model | split | " + " | ".join(task.metrics) + " | predicted 1 (%) |"
          + (" [CLS] cosine to the teacher, layer by layer |" if teacher else ""))
    print("|---|---|" + "---|" * (len(task.metrics) + 1) + ("---|" if teacher else ""))
    for path in a.models:
        for name, split in splits.items():
            logits, cls = forward(path, split, max_len)
            metrics = compute_metrics(task, logits, np.asarray(split["label"]))
            cells = [f"{100 * metrics[m]:.2f}" for m in task.metrics] + [f"{100 * (logits.argmax(-1) == 1).mean():.1f}"]
            if teacher:
                t = teacher[name]
                cells.append(" / ".join(
                    f"{torch.nn.functional.cosine_similarity(cls[:, k], t[:, k * a.stride], dim=-1).mean():.3f}"
                    for k in range(1, cls.shape[1]) if k * a.stride < t.shape[1]))
            print(f"| {path} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

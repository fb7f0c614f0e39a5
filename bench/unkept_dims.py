"""How large are the dims a width budget leaves out, in the distilled layer, after `mud`'s HSK stage?

MUD's width loss (`--hidden-width-loss zeroed`, set by `--preset mud`; docs/METHODS.md row 10)
compares whole vectors with the teacher's unkept dims zeroed, so it also pulls the student's
unkept dims toward 0; hskd's default compares the kept dims only. This prints, for the student
after its HSK stage (``RUN/checkpoints/00-hsk/final.safetensors``), for the teacher and for the
student's backbone before distillation, the mean |h| of the distilled layer's kept and unkept
dims over the real tokens of the task's first dev rows, and their ratio (about 1 when both kinds
of dims carry the same signal).

Usage: python bench/unkept_dims.py --task CoLA --data-dir ../shared/data/glue --teacher TEACHER RUN [RUN ...]
(RUN: a finished `hskd distill --recipe mud` folder with a width budget below 1, distilled from TEACHER.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from stage_student import load_stage_student  # bench/, beside this script
from transformers import AutoModelForSequenceClassification

from hskd import models
from hskd.knowledge import KnowledgeSpec
from hskd.selectors import width_index
from hskd.tasks import get_task, load_glue


def magnitudes(model, batches, layer: int, kept: torch.Tensor) -> tuple[float, float]:
    """Mean |h| over real tokens of the kept and of the unkept dims of ``hidden_states[layer]``."""
    unkept = torch.ones(model.config.hidden_size, dtype=torch.bool)
    unkept[kept] = False
    sums, counts = [0.0, 0.0], [0, 0]
    with torch.no_grad():
        for b in batches:
            h = model.eval()(**b, output_hidden_states=True).hidden_states[layer][b["attention_mask"].bool()]
            for i, part in enumerate((h[:, kept], h[:, unkept])):
                sums[i] += part.abs().sum().item()
                counts[i] += part.numel()
    return sums[0] / counts[0], sums[1] / counts[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--teacher", required=True, help="the teacher the runs were distilled from")
    ap.add_argument("--rows", type=int, default=512, help="dev rows to measure on (default 512)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = load_glue(get_task(a.task), a.data_dir)
    dev = next(iter(data.dev.values()))  # MNLI: the matched split
    columns = [c for c in ("text_a", "text_b") if c in dev.column_names]
    teacher = AutoModelForSequenceClassification.from_pretrained(a.teacher)
    print("| model | layer | kept dims | mean abs kept | mean abs unkept | unkept / kept |")
    print("|---|---|---|---|---|---|")
    for run in a.runs:
        record = json.loads((Path(run) / "hskd.json").read_text())
        spec = KnowledgeSpec.from_dict(record["knowledge"])
        settings = record["settings"]
        (s_layer, t_layer), = record["layer_pairs"][-1:]  # the top pair: the one a 1-layer budget keeps
        tokenizer = models.load_tokenizer(run)
        texts = [list(t) for t in zip(*(dev[c][: a.rows] for c in columns))]
        batches = [tokenizer(*zip(*texts[i:i + 64]), padding=True, truncation=True, max_length=64,
                             return_tensors="pt") for i in range(0, len(texts), 64)]
        after, _ = load_stage_student(Path(run), "hsk")
        hidden = after.config.hidden_size
        kept = width_index(spec, torch.zeros(1, hidden))
        backbone = AutoModelForSequenceClassification.from_pretrained(models.resolve_model(settings.get("student_model")))
        loss = settings.get("hidden_width_loss") or "selected"
        for name, model, layer in ((f"{run} after the HSK stage ({loss})", after, s_layer),
                                   ("its teacher", teacher, t_layer), ("its backbone, before", backbone, s_layer)):
            k, u = magnitudes(model, batches, layer, kept)
            print(f"| {name} | {layer} | {len(kept)} of {hidden} | {k:.4f} | {u:.4f} | {u / k:.3f} |")


if __name__ == "__main__":
    main()

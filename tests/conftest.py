"""Shared fixtures: a tiny random-weight BERT built in memory (with the default backbone's
real WordPiece tokenizer), GLUE-layout files written by the tests, and the real GLUE data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def real_glue_dir() -> Path:
    """``$GLUE_DIR`` or ``../shared/data/glue`` beside the checkout. Integration tests need it."""
    root = Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "data" / "glue")
    assert (root / "SST-2" / "train.tsv").is_file(), f"GLUE data not found at {root}; set $GLUE_DIR"
    return root


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return real_glue_dir()


def save_tiny_bert(path: Path, layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hskd.models import resolve_model

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide random BERT with the MiniLM tokenizer, saved to disk."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_narrow(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide random BERT (same tokenizer): a student narrower than tiny_backbone."""
    return save_tiny_bert(tmp_path_factory.mktemp("narrow") / "bert", layers=2, hidden=16, heads=2, seed=1)


TASK_FILES = {
    # task: (header, rows): rows use each task's own column layout and label strings
    "SST-2": ("sentence\tlabel", ["a good film\t1", "a dull mess\t0", "fine work\t1", "bad\t0"]),
    "CoLA": (None, ["gj04\t1\t\tthe cat sat .", "gj04\t0\t*\tcat the sat .", "gj04\t1\t\tit rains .",
                    "gj04\t0\t*\trains it the ."]),
    "MRPC": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             ["1\t1\t2\tHe left .\tHe went away .", "0\t3\t4\tIt is red .\tDogs bark .",
              "1\t5\t6\tA b .\tA b c .", "0\t7\t8\tX .\tY ."]),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
              ["0\tg\tf\ty\t0\ts\ts\tA man .\tA man .\t5.000", "1\tg\tf\ty\t1\ts\ts\tA dog .\tA cat .\t1.5",
               "2\tg\tf\ty\t2\ts\ts\tRain .\tSun .\t0.25", "3\tg\tf\ty\t3\ts\ts\tHi .\tHello .\t4.0"]),
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            ["0\t1\t2\tWhy ?\tHow ?\t0", "1\t3\t4\tWhat is x ?\tWhat's x ?\t1", "2\t5\t6\tA ?\tB ?\t0",
             "3\t7\t8\tC ?\tC ?\t1"]),
    "MNLI": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
             ["0\t1\t1\tg\tb\tb\tp\tp\tA man sleeps .\tA person sleeps .\tentailment\tentailment",
              "1\t2\t2\tg\tb\tb\tp\tp\tA man sleeps .\tA man runs .\tcontradiction\tcontradiction",
              "2\t3\t3\tg\tb\tb\tp\tp\tA man sleeps .\tIt is late .\tneutral\tneutral"]),
    "QNLI": ("index\tquestion\tsentence\tlabel",
             ["0\tWho ?\tHe did .\tentailment", "1\tWhen ?\tBlue .\tnot_entailment"]),
    "RTE": ("index\tsentence1\tsentence2\tlabel",
            ["0\tA b .\tA .\tentailment", "1\tA b .\tC .\tnot_entailment"]),
    "WNLI": ("index\tsentence1\tsentence2\tlabel", ["0\tA b .\tA .\t1", "1\tA b .\tC .\t0"]),
}


def write_glue(root: Path, task: str, train_rows=None, dev_rows=None) -> Path:
    """Write ``root/TASK/{train,dev}.tsv`` in the GLUE layout (MNLI: dev_matched/mismatched)."""
    header, rows = TASK_FILES[task]
    folder = root / task
    folder.mkdir(parents=True, exist_ok=True)
    dev_names = ["dev_matched.tsv", "dev_mismatched.tsv"] if task == "MNLI" else ["dev.tsv"]
    for name, body in [("train.tsv", train_rows or rows)] + [(n, dev_rows or rows) for n in dev_names]:
        lines = ([header] if header else []) + list(body)
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def run_cli(*args: str) -> int:
    from hskd.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    """GLUE-layout SST-2, MRPC and STS-B with 16 training rows each."""
    root = tmp_path_factory.mktemp("glue")
    words = ["good", "bad", "fine", "awful", "great", "dull", "nice", "poor"]
    sst = [f"a {words[i % 8]} film number {i}\t{1 - (i % 2)}" for i in range(16)]
    write_glue(root, "SST-2", train_rows=sst, dev_rows=sst[:8])
    mrpc = [f"{i % 2}\t{i}\t{i}\tthe {words[i % 8]} cat .\tthe {words[(i + i % 2) % 8]} cat ." for i in range(16)]
    write_glue(root, "MRPC", train_rows=mrpc, dev_rows=mrpc[:8])
    sts = [f"{i}\tg\tf\ty\t{i}\ts\ts\tthe {words[i % 8]} dog\ta {words[i % 3]} dog\t{i % 5}.0" for i in range(16)]
    write_glue(root, "STS-B", train_rows=sts, dev_rows=sts[:8])
    return root


TINY = ("--num-train-epochs", "1", "--batch-size", "8", "--quiet", "--logging-steps", "1")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_backbone, tiny_glue) -> Path:
    """The tiny backbone fine-tuned for one epoch on tiny SST-2 (a teacher with SST-2 labels)."""
    out = tmp_path_factory.mktemp("teacher") / "sst2"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", out, *TINY) == 0
    return out

"""Soft-label KD between a teacher and a student that tokenize differently: the teacher's
inputs are made with its own tokenizer, online and in the cache; token-aligned recipes are
refused in one line."""

import json

import torch

from tests.conftest import TINY, run_cli


def _other_teacher(root, glue):
    """A tiny BERT with its own small WordPiece vocabulary (not the student's), fine-tuned."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for line in (glue / "SST-2" / "train.tsv").read_text().split("\n")[1:]
                    for w in line.split("\t")[0].split()})
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    backbone = root / "backbone"
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    teacher = root / "teacher"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", glue, "--model", backbone, "--output-dir", teacher,
                   *TINY) == 0
    return teacher, tok


def test_soft_labels_cross_tokenizers_online_and_from_the_cache(tmp_path, capsys, tiny_glue, tiny_narrow):
    teacher, tok = _other_teacher(tmp_path, tiny_glue)
    from transformers import AutoTokenizer

    student_tok = AutoTokenizer.from_pretrained(tiny_narrow)
    text = "a good film number 3"
    assert tok(text)["input_ids"] != student_tok(text)["input_ids"]  # they really tokenize differently
    common = ("--task", "SST-2", "--data-dir", tiny_glue, "--student-model", tiny_narrow, "--student-layers", "2",
              *TINY)
    assert run_cli("distill", *common, "--teacher", teacher, "--recipe", "kd", "--output-dir", tmp_path / "online") == 0
    online = json.loads((tmp_path / "online" / "hskd.json").read_text())
    assert online["stages"][0]["train_loss"] > 0
    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", teacher, "--recipe", "kd",
                   "--student-layers", "2", "--quiet", "--output-dir", cache) == 0
    assert run_cli("distill", *common, "--cache", cache, "--recipe", "kd", "--output-dir", tmp_path / "cached") == 0
    cached = json.loads((tmp_path / "cached" / "hskd.json").read_text())
    # the same soft labels either way: the same loss, step by step
    assert abs(cached["stages"][0]["train_loss"] - online["stages"][0]["train_loss"]) < 1e-4
    capsys.readouterr()
    assert run_cli("distill", *common, "--teacher", teacher, "--recipe", "tinybert", "--output-dir",
                   tmp_path / "aligned") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token-aligned knowledge" in err[0] and not (tmp_path / "aligned").exists()

"""The command line: every user-error path (one line, exit 2, nothing half-written), config
files, and the output-directory rules."""

import json
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from tests.conftest import TINY, run_cli, write_glue


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("hskd: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def _finetune(*extra):
    return ("finetune", "--task", "SST-2", *TINY, *extra)


@pytest.mark.parametrize("case, match", [
    ("missing_dir", "not found"),
    ("missing_column", "no column"),
    ("bad_label", "not one of"),
    ("empty", "no rows"),
    ("regression", "not a number"),
])
def test_data_errors_exit_2_and_leave_nothing(tmp_path, capsys, tiny_backbone, case, match):
    root = tmp_path / "glue"
    task = "STS-B" if case == "regression" else "SST-2"
    if case != "missing_dir":
        write_glue(root, task)
    folder = root / task
    if case == "missing_column":
        (folder / "train.tsv").write_text("text\tlabel\nhi\t1\n")
    elif case == "bad_label":
        (folder / "dev.tsv").write_text("sentence\tlabel\nhi\tpositive\n")
    elif case == "empty":
        (folder / "train.tsv").write_text("sentence\tlabel\n")
    elif case == "regression":
        (folder / "train.tsv").write_text(
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tg\tf\ty\t0\ts\ts\tA\tB\tn/a\n")
    out = tmp_path / "out"
    code = run_cli("finetune", "--task", task, "--data-dir", root, "--model", tiny_backbone, "--output-dir", out, *TINY)
    assert code == 2
    assert match in _error_line(capsys)
    assert not out.exists()


def test_missing_model_and_unknown_task(tmp_path, capsys, tiny_glue):
    out = tmp_path / "out"
    assert run_cli(*_finetune("--data-dir", tiny_glue, "--model", tmp_path / "nope", "--output-dir", out)) == 2
    assert "model not found" in _error_line(capsys) and not out.exists()
    assert run_cli("finetune", "--task", "SST-3", "--output-dir", out, *TINY) == 2
    assert "unknown task" in _error_line(capsys)


def test_mismatched_vocabularies_are_refused_for_token_aligned_recipes(tmp_path, capsys, tiny_glue, tiny_teacher):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "film", "good", "bad"]))
    other = tmp_path / "other"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(other)
    cfg = BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertForSequenceClassification(cfg).save_pretrained(other)
    out = tmp_path / "student"
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--student-model", other, "--student-layers", "1", "--output-dir", out, *TINY)
    assert code == 2  # the default recipe, tinybert, compares hidden states token by token
    assert "distills token-aligned knowledge" in _error_line(capsys) and not out.exists()
    assert not out.exists()


def test_output_dir_holding_another_run_is_refused_then_overwritten(tmp_path, capsys, tiny_backbone, tiny_glue):
    out = tmp_path / "out"
    base = _finetune("--data-dir", tiny_glue, "--model", tiny_backbone, "--output-dir", out)
    assert run_cli(*base) == 0
    before = (out / "model.safetensors").read_bytes()
    assert run_cli(*base, "--learning-rate", "1e-3") == 2
    assert "holds a different run" in _error_line(capsys)
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    assert run_cli(*base) == 2  # the same run again is refused too: never silently redone
    assert "finished run" in _error_line(capsys)
    assert run_cli(*base, "--learning-rate", "1e-3", "--overwrite") == 0
    assert json.loads((out / "hskd.json").read_text())["settings"]["learning_rate"] == 1e-3


def test_config_file_and_flag_precedence(tmp_path, tiny_backbone, tiny_glue):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": "SST-2", "data-dir": str(tiny_glue), "model": str(tiny_backbone),
                                   "num_train_epochs": 1, "batch_size": 4, "learning_rate": 3e-4, "quiet": True}))
    out = tmp_path / "out"
    assert run_cli("finetune", "--config", cfg, "--output-dir", out, "--batch-size", "8") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["learning_rate"] == 3e-4  # from the file
    assert saved["batch_size"] == 8  # the flag wins
    assert saved["data_dir"] == str(tiny_glue)


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rat: 1\n")
    assert run_cli("finetune", "--config", cfg, "--output-dir", tmp_path / "o") == 2
    assert "unknown option" in _error_line(capsys)


def test_evaluate_prints_the_recorded_metrics(tmp_path, capsys, tiny_teacher, tiny_glue):
    capsys.readouterr()
    assert run_cli("evaluate", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_teacher, "--quiet") == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])
    record = json.loads((Path(tiny_teacher) / "hskd.json").read_text())
    assert printed["dev"] == record["eval"]["dev"]
    assert printed["eval_examples_per_second"] > 0 and printed["layers"] == 4


def test_never_touches_a_folder_hskd_did_not_make(tmp_path, capsys, tiny_backbone, tiny_glue):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    base = _finetune("--data-dir", tiny_glue, "--model", tiny_backbone, "--output-dir", out)
    assert run_cli(*base, "--overwrite") == 2
    assert "not an hskd run" in _error_line(capsys)
    assert (out / "notes.txt").read_text() == "precious"


def test_resume_continues_only_the_same_run(tmp_path, capsys, tiny_backbone, tiny_glue):
    out = tmp_path / "out"
    base = _finetune("--data-dir", tiny_glue, "--model", tiny_backbone, "--output-dir", out)
    assert run_cli(*base) == 0
    assert run_cli(*base, "--learning-rate", "1e-3", "--resume") == 2
    assert "different run" in _error_line(capsys)


def test_the_terminal_shows_one_line_for_the_new_head_and_what_was_written(tmp_path, capfd, tiny_glue, tiny_backbone):
    out = tmp_path / "run"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", out, "--num-train-epochs", "1", "--batch-size", "8") == 0
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err and "MISSING" not in captured.err
    assert captured.err.count("new classification head (2 tensors") == 1
    assert "tokenizing" not in captured.err and "Loading weights" not in captured.err
    assert f"wrote {out}" in captured.out

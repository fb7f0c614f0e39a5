"""``hskd predict``: GLUE submission files (checked against the test files' rows and indices,
on the real SST-2 and MRPC test sets), STS-B clipping, dev predictions, and a file of new texts."""

import csv

import pytest

from tests.conftest import TINY, run_cli, write_glue


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["SST-2", "MRPC"])
def test_a_submission_file_has_one_row_per_test_row_with_its_index(tmp_path, glue_dir, tiny_glue, tiny_backbone,
                                                                   task):
    model = tmp_path / "model"
    assert run_cli("finetune", "--task", task, "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", model, *TINY) == 0
    out = tmp_path / "submission"
    assert run_cli("predict", "--task", task, "--data-dir", glue_dir, "--model", model, "--output-dir", out,
                   "--quiet") == 0
    test = _rows(glue_dir / task / "test.tsv")
    got = _rows(out / f"{task}.tsv")
    assert got[0] == ["index", "prediction"]
    assert [r[0] for r in got[1:]] == [r[0] for r in test[1:]]  # every test row, in order, by its index
    assert len(got) - 1 == {"SST-2": 1821, "MRPC": 1725}[task]
    assert {r[1] for r in got[1:]} <= {"0", "1"}


def test_sts_b_is_clipped_and_dev_and_new_texts_work(tmp_path, capsys, tiny_glue, tiny_backbone):
    glue = tmp_path / "glue"
    write_glue(glue, "STS-B")
    (glue / "STS-B" / "test.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
        + "".join(f"{i}\tg\tf\ty\t{i}\ts\ts\ta dog {i}\ta cat\n" for i in range(5)))
    model = tmp_path / "stsb"
    # a very high learning rate sends the untrained regression head far outside [0, 5]
    assert run_cli("finetune", "--task", "STS-B", "--data-dir", glue, "--model", tiny_backbone,
                   "--output-dir", model, "--learning-rate", "0.5", *TINY) == 0
    assert run_cli("predict", "--task", "STS-B", "--data-dir", glue, "--model", model, "--output-dir",
                   tmp_path / "p", "--quiet") == 0
    scores = [float(r[1]) for r in _rows(tmp_path / "p" / "STS-B.tsv")[1:]]
    assert len(scores) == 5 and all(0.0 <= v <= 5.0 for v in scores)

    sst = tmp_path / "sst"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", sst, *TINY) == 0
    assert run_cli("predict", "--task", "SST-2", "--data-dir", tiny_glue, "--model", sst, "--split", "dev",
                   "--output-dir", tmp_path / "dev", "--quiet") == 0
    assert len(_rows(tmp_path / "dev" / "SST-2.tsv")) == 1 + 8
    new = tmp_path / "new.jsonl"
    new.write_text('{"text": "a good film"}\n{"text": "a dull mess"}\n')
    assert run_cli("predict", "--model", sst, "--input", new, "--text-columns", "text", "--output-dir",
                   tmp_path / "new", "--quiet") == 0
    rows = _rows(tmp_path / "new" / "predictions.tsv")
    assert rows[0] == ["index", "prediction", "probability"] and [r[0] for r in rows[1:]] == ["0", "1"]
    assert all(0.5 <= float(r[2]) <= 1.0 for r in rows[1:])
    capsys.readouterr()
    assert run_cli("predict", "--model", sst, "--input", new, "--text-columns", "sentence", "--output-dir",
                   tmp_path / "bad") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'sentence'" in err[0] and not (tmp_path / "bad").exists()


def test_every_exported_model_has_a_model_card_that_the_hub_library_parses(tmp_path, capsys, tiny_glue,
                                                                            tiny_teacher, tiny_narrow):
    import json

    from huggingface_hub import ModelCard

    out = tmp_path / "student"
    assert run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--student-model", tiny_narrow, "--student-layers", "2", "--recipe", "tinybert", "--output-dir", out,
                   *TINY) == 0
    record = json.loads((out / "hskd.json").read_text())
    card = ModelCard.load(out / "README.md")
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.dataset_config, result.metric_type) == ("nyu-mll/glue", "sst2", "accuracy")
    assert result.metric_value == round(record["eval"]["main_value"], 4)
    assert card.data.pipeline_tag == "text-classification" and "tinybert" in card.data.tags
    assert card.data.base_model is None  # a local backbone without a hub id is not claimed
    text = card.text
    assert "## Size and speed" in text and "| teacher |" in text and "TinyBERT" in text
    assert f"{record['eval']['parameters']:,}" in text
    # --push-to-hub offline: refused in one line before anything trains
    capsys.readouterr()
    assert run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--recipe", "kd", "--push-to-hub", "--hub-model-id", "me/student", "--output-dir",
                   tmp_path / "push", *TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and not (tmp_path / "push").exists()


def test_the_default_backbone_is_named_by_its_hub_id():
    from hskd.model_card import DEFAULT_BACKBONE, base_model_id

    assert base_model_id(None) == DEFAULT_BACKBONE
    assert base_model_id("bert-base-uncased") == "bert-base-uncased"


@pytest.mark.slow
def test_onnx_export_matches_pytorch_on_the_dev_set(tmp_path, capsys, tiny_glue, tiny_teacher):
    import json

    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    assert run_cli("export", "--model", tiny_teacher, "--onnx", out, "--task", "SST-2", "--data-dir", tiny_glue) == 0
    check = json.loads((out / "onnx_check.json").read_text())
    assert check["rows"] == 8 and check["max_abs_diff"] < 1e-4 and check["argmax_agreement"] == 1.0
    # the folder runs on its own: tokenizer and ONNX model, any batch and length
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["one", "a much longer sentence than the first one"], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert logits[0].shape == (2, 2)
    capsys.readouterr()
    assert run_cli("export", "--model", tiny_teacher, "--onnx", out) == 2  # not over a finished export
    assert "is not empty" in capsys.readouterr().err


def test_mnli_gives_matched_and_mismatched_files_with_label_names(tmp_path, tiny_backbone):
    glue = tmp_path / "glue"
    write_glue(glue, "MNLI")
    header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t" \
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\n"
    for name, n in (("test_matched.tsv", 3), ("test_mismatched.tsv", 4)):
        (glue / "MNLI" / name).write_text(header + "".join(
            f"{i}\t1\t1\tg\tb\tb\tp\tp\tA man {i} .\tA person .\n" for i in range(n)))
    model = tmp_path / "mnli"
    assert run_cli("finetune", "--task", "MNLI", "--data-dir", glue, "--model", tiny_backbone, "--output-dir", model,
                   *TINY) == 0
    assert run_cli("predict", "--task", "MNLI", "--data-dir", glue, "--model", model, "--output-dir",
                   tmp_path / "p", "--quiet") == 0
    for name, n in (("MNLI-m", 3), ("MNLI-mm", 4)):
        rows = _rows(tmp_path / "p" / f"{name}.tsv")
        assert len(rows) == 1 + n and {r[1] for r in rows[1:]} <= {"entailment", "neutral", "contradiction"}

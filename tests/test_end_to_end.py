"""`hskd run` on real GLUE slices with the default MiniLM backbone; a fresh `hskd evaluate` of
the exported student gives the metric recorded in metrics.json."""

import json

import pytest
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import run_cli


@pytest.mark.slow
@pytest.mark.parametrize("task, metric", [("SST-2", "accuracy"), ("MRPC", "f1")])
def test_run_on_real_glue_slices(tmp_path, capsys, glue_dir, task, metric):
    out = tmp_path / "run"
    code = run_cli("run", "--task", task, "--data-dir", glue_dir, "--output-dir", out, "--max-train-samples", "256",
                   "--max-eval-samples", "128", "--num-train-epochs", "1", "--max-seq-length", "64", "--quiet")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student-finetune", "student"}
    assert metrics["teacher"]["layers"] == 6 and metrics["student"]["layers"] == 3
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]
    assert metrics["student"]["recipe"] == "tinybert"
    for name in metrics:
        model = AutoModelForSequenceClassification.from_pretrained(out / name)
        AutoTokenizer.from_pretrained(out / name)
        assert model.config.num_labels == 2
    report = (out / "report.md").read_text()
    assert all(name in report for name in metrics) and "dev inference ex/s" in report
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["task"] == task and config["recipe"] == "tinybert"
    assert list((out / "student" / "checkpoints").glob("*/runs/*"))  # TensorBoard logs
    capsys.readouterr()
    assert run_cli("evaluate", "--task", task, "--data-dir", glue_dir, "--model", out / "student",
                   "--max-eval-samples", "128", "--max-seq-length", "64", "--quiet") == 0
    printed = capsys.readouterr().out
    fresh = json.loads(printed[printed.index("{"):])
    assert fresh["dev"]["dev"][metric] == pytest.approx(metrics["student"]["dev"]["dev"][metric], abs=1e-9)
    # a second run reuses every finished part instead of training again
    assert run_cli("run", "--task", task, "--data-dir", glue_dir, "--output-dir", out, "--max-train-samples", "256",
                   "--max-eval-samples", "128", "--num-train-epochs", "1", "--max-seq-length", "64", "--quiet") == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["teacher"]["train_seconds"] == metrics["teacher"]["train_seconds"]

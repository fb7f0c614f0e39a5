"""Bad inputs are one-line errors that touch nothing: typed and ranged settings, label order,
a cache tied to its teacher, outputs that would overwrite inputs, and a loss that is no
longer finite."""

import json
import shutil

import pytest
import yaml

from hskd.terms import LossTerm, loss_term
from tests.conftest import REPO, TINY, run_cli


@loss_term("test_nan")
class NotANumber(LossTerm):
    """A term that breaks: its loss is NaN."""

    def loss(self, x):
        return x.logits.float().sum() * float("nan")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hskd: error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_glue, tiny_backbone):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", out, *TINY) == 0
    return out


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--learning-rate", "nan"], "learning_rate must be greater than 0"),
    (["--warmup-ratio", "-0.1"], "warmup_ratio must be at least 0"),
    (["--seed", "-1"], "seed must be at least 0"),
    (["--num-train-epochs", "0"], "num_train_epochs must be greater than 0"),
    (["--max-train-samples", "0"], "max_train_samples must be at least 1"),
    (["--task-type", "regresion"], "did you mean 'regression'"),
    (["--batch-size", "abc"], "invalid int value"),
])
def test_bad_settings_are_refused_before_overwrite_deletes_anything(capsys, tiny_glue, tiny_backbone, finished,
                                                                     flags, message):
    before = sorted(p.name for p in finished.rglob("*"))
    code = run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", finished, "--overwrite", *TINY, *flags)
    assert code == 2 and message in _error_line(capsys)
    assert sorted(p.name for p in finished.rglob("*")) == before  # the finished run is intact
    assert json.loads((finished / "hskd.json").read_text())["status"] == "complete"


def test_distill_and_cache_refuse_a_teacher_with_another_label_order(tmp_path, capsys, tiny_glue, tiny_teacher):
    flipped = tmp_path / "flipped"
    shutil.copytree(tiny_teacher, flipped)
    config = json.loads((flipped / "config.json").read_text())
    config["id2label"] = {"0": "1", "1": "0"}
    config["label2id"] = {"1": 0, "0": 1}
    (flipped / "config.json").write_text(json.dumps(config))
    common = ("--task", "SST-2", "--data-dir", tiny_glue, "--teacher", flipped, "--quiet")
    assert run_cli("distill", *common, "--recipe", "kd", "--student-layers", "2", "--output-dir", tmp_path / "s") == 2
    assert "labels ['1', '0'] differ from SST-2's ['0', '1']" in _error_line(capsys)
    assert run_cli("cache", *common, "--knowledge", "1l_2t", "--student-layers", "2", "--output-dir",
                   tmp_path / "c") == 2
    assert "differ from SST-2's" in _error_line(capsys)
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_a_cache_is_refused_for_another_teacher(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_backbone):
    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--knowledge",
                   "1l_2t", "--student-layers", "2", "--output-dir", cache, "--quiet") == 0
    other = tmp_path / "other"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone, "--seed", "7",
                   "--output-dir", other, *TINY) == 0
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", other, "--cache", cache,
                   "--recipe", "mud", "--knowledge", "1l_2t", "--student-layers", "2", "--output-dir",
                   tmp_path / "s", *TINY)
    assert code == 2 and "different teacher_sha256" in _error_line(capsys)


def test_output_dir_may_not_be_the_teacher(capsys, tiny_glue, tiny_teacher):
    weights = (tiny_teacher / "model.safetensors").read_bytes()
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--recipe", "kd",
                   "--output-dir", tiny_teacher, "--overwrite", *TINY)
    assert code == 2 and "is where the teacher is" in _error_line(capsys)
    assert (tiny_teacher / "model.safetensors").read_bytes() == weights


def test_a_non_finite_loss_stops_the_run_unfinished(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_narrow):
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(yaml.safe_dump({"knowledge": {"logits": True}, "stages": [
        {"name": "broken", "terms": [{"loss": "kd", "weight": 1.0}, {"loss": "test_nan", "weight": 1.0}]}]}))
    out = tmp_path / "s"
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--student-model", tiny_narrow, "--student-layers", "2", "--recipe", recipe,
                   "--plugin", REPO / "tests" / "test_reliability.py", "--output-dir", out, *TINY)
    line = _error_line(capsys)
    assert code == 2 and "the loss became nan by step 1 in term" in line and "test_nan" in line
    record = out / "hskd.json"
    assert not record.exists() or json.loads(record.read_text())["status"] != "complete"


def test_run_refuses_an_unknown_recipe_before_training(tmp_path, capsys, tiny_glue):
    out = tmp_path / "run"
    assert run_cli("run", "--task", "SST-2", "--data-dir", tiny_glue, "--recipe", "kdd", "--output-dir", out) == 2
    assert "unknown recipe 'kdd'" in _error_line(capsys) and not out.exists()


def test_resume_with_changed_settings_names_the_keys(capsys, tiny_glue, tiny_backbone, finished):
    code = run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", finished, "--resume", *TINY, "--seed", "7", "--weight-decay", "0.1")
    assert code == 2 and "holds a different run (changed: seed, weight_decay)" in _error_line(capsys)

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
    (["--max-seq-length", "1000"], "exceeds the model's 128 positions"),
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


def test_resume_reads_a_finished_run_back_even_with_its_checkpoints_deleted(tmp_path, tiny_glue, tiny_backbone,
                                                                            finished):
    # before: with checkpoints/ deleted (to save disk), --resume found no checkpoint, trained the
    # run again from scratch and overwrote its model and record
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "checkpoints")
    model, record = (run / "model.safetensors").stat().st_mtime_ns, (run / "hskd.json").read_bytes()
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", run, "--resume", *TINY) == 0
    assert not (run / "checkpoints").exists()
    assert (run / "model.safetensors").stat().st_mtime_ns == model and (run / "hskd.json").read_bytes() == record


def test_resume_with_another_cache_is_refused(tmp_path, capsys, tiny_glue, tiny_teacher):
    common = ("--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--student-layers", "2")
    for name, knowledge in (("a", "1l_2t"), ("b", "1l_3t")):
        assert run_cli("cache", *common, "--knowledge", knowledge, "--output-dir", tmp_path / name, "--quiet") == 0
    distill = ("distill", *common, "--recipe", "mud", "--knowledge", "1l_2t", "--output-dir", tmp_path / "s", *TINY)
    assert run_cli(*distill, "--cache", tmp_path / "a") == 0
    code = run_cli(*distill, "--cache", tmp_path / "b", "--resume")  # before: skipped training, old result
    assert code == 2 and "changed: cache_sha256" in _error_line(capsys)


def test_a_cache_remembers_its_teachers_label_order(tmp_path, capsys, tiny_glue, tiny_teacher):
    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--knowledge",
                   "1l_2t", "--student-layers", "2", "--output-dir", cache, "--quiet") == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["fingerprint"]["teacher_labels"] == ["0", "1"]
    manifest["fingerprint"]["teacher_labels"] = ["1", "0"]  # as a cache from a teacher with flipped labels says
    (cache / "manifest.json").write_text(json.dumps(manifest))
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--cache", cache,
                   "--recipe", "mud", "--knowledge", "1l_2t", "--student-layers", "2", "--output-dir",
                   tmp_path / "s", *TINY)
    line = _error_line(capsys)
    assert code == 2 and "from a teacher with labels ['1', '0']" in line and not (tmp_path / "s").exists()


def test_unreadable_inputs_are_one_line(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_backbone, finished):
    glue = tmp_path / "glue"
    shutil.copytree(tiny_glue / "SST-2", glue / "SST-2")
    train = glue / "SST-2" / "train.tsv"
    train.write_bytes(train.read_bytes().replace(b"good", b"caf\xe9"))  # Latin-1, not UTF-8
    finetune = ("finetune", "--task", "SST-2", "--model", tiny_backbone, *TINY)
    assert run_cli(*finetune, "--data-dir", glue, "--output-dir", tmp_path / "a") == 2
    assert "is not UTF-8 text" in _error_line(capsys) and not (tmp_path / "a").exists()
    train.write_text("sentence\tsentence\tlabel\na\tb\t1\n")
    assert run_cli(*finetune, "--data-dir", glue, "--output-dir", tmp_path / "a") == 2
    assert "appears 2 times in the header" in _error_line(capsys)

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_teacher, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    distill = ("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--recipe", "kd", "--student-layers", "2",
               "--output-dir", tmp_path / "s", *TINY)
    assert run_cli(*distill, "--teacher", truncated) == 2
    assert "are truncated or corrupt" in _error_line(capsys)
    (truncated / "config.json").write_text('{"model_type": ')
    assert run_cli(*distill, "--teacher", truncated) == 2
    assert "could not load a model config" in _error_line(capsys)

    broken = tmp_path / "broken"
    shutil.copytree(finished, broken)
    (broken / "hskd.json").write_text('{"status": "compl')  # a record cut short
    assert run_cli(*finetune, "--data-dir", tiny_glue, "--output-dir", broken) == 2
    assert "hskd.json is unreadable or malformed" in _error_line(capsys)

    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--knowledge",
                   "1l_2t", "--student-layers", "2", "--output-dir", cache, "--quiet") == 0
    (cache / "manifest.json").write_text("[1, 2")
    assert run_cli(*distill, "--cache", cache, "--recipe", "mud", "--knowledge", "1l_2t") == 2
    assert "manifest.json is unreadable or malformed" in _error_line(capsys)
    (cache / "manifest.json").write_text("[1, 2]")
    assert run_cli(*distill, "--cache", cache, "--recipe", "mud", "--knowledge", "1l_2t") == 2
    assert "is not a knowledge-cache manifest" in _error_line(capsys)


def test_a_failed_command_deletes_nothing_it_did_not_create(tmp_path, capsys, monkeypatch, tiny_glue, tiny_backbone):
    # the folder appears while this command runs (before, the clean-up went by "it did not exist
    # when I started" and deleted it); the command then fails on its data: the folder stays
    import hskd.jobs
    from hskd.errors import HskdError

    out = tmp_path / "theirs"

    def appears_then_fails(*args, **kwargs):
        out.mkdir()
        (out / "work.txt").write_text("someone else's")
        raise HskdError("bad data")

    monkeypatch.setattr(hskd.jobs, "load_data", appears_then_fails)
    finetune = ("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone, *TINY)
    assert run_cli(*finetune, "--output-dir", out) == 2
    assert "bad data" in _error_line(capsys) and (out / "work.txt").exists()
    monkeypatch.undo()


def test_a_run_that_fails_after_creating_its_folder_removes_it(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_narrow):
    # the folder, its lock and the parents the run made go; a NaN loss is found after training began
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(yaml.safe_dump({"knowledge": {"logits": True}, "stages": [
        {"name": "broken", "terms": [{"loss": "kd", "weight": 1.0}, {"loss": "test_nan", "weight": 1.0}]}]}))
    mine = tmp_path / "new" / "deeper" / "mine"
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--student-model", tiny_narrow, "--student-layers", "2", "--recipe", recipe,
                   "--plugin", REPO / "tests" / "test_reliability.py", "--output-dir", mine, *TINY)
    assert code == 2 and "the loss became nan" in _error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_settings_added_later_leave_older_runs_recognised_and_search_controls_out():
    from hskd.config import Settings
    from hskd.runs import fingerprint_settings

    base = Settings(task="MRPC", recipe="mud")
    for job in ("finetune", "distill", "run"):
        fp = fingerprint_settings(base, job)
        # at their defaults, the settings of the storage and search work are not in the
        # fingerprint, so a folder made before them is still the same run (not "pass --overwrite")
        assert not {"storage", "early_stopping_patience", "stage_convergence", "tolerance", "dry_run"} & set(fp), job
    # the search's tolerance and the planner's dry-run do not change a point's result
    assert fingerprint_settings(Settings(task="MRPC", recipe="mud", tolerance=1.0), "distill") == \
        fingerprint_settings(base, "distill")
    # early stopping changes a fine-tune's result: a rerun with it is a different run
    stopped = fingerprint_settings(Settings(task="MRPC", early_stopping_patience=2), "finetune")
    assert stopped["early_stopping_patience"] == 2
    assert fingerprint_settings(Settings(task="MRPC", recipe="mud", storage="fp8"), "run")["storage"] == "fp8"
    # convergence of the distillation stages changes a student, never the teacher it learns from
    converging = Settings(task="MRPC", recipe="ird", stage_convergence=0.01)
    assert fingerprint_settings(converging, "distill")["stage_convergence"] == 0.01
    assert "stage_convergence" not in fingerprint_settings(converging, "finetune")
    # 0 is the test turned off, the same run as no test at all
    assert fingerprint_settings(Settings(task="MRPC", recipe="ird", stage_convergence=0.0), "distill") == \
        fingerprint_settings(Settings(task="MRPC", recipe="ird"), "distill")


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 13632")])
def test_a_full_disk_is_one_line_keeps_the_run_and_resume_finishes_it(tmp_path, capsys, monkeypatch,
                                                                                tiny_glue, tiny_backbone, error):
    import transformers

    out = tmp_path / "run"
    args = ("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone, "--output-dir", out,
            *TINY)

    def full(*_, **__):
        raise error

    with monkeypatch.context() as m:
        m.setattr(transformers.Trainer, "_save_checkpoint", full)
        assert run_cli(*args) == 2
    assert "no space left on the device" in _error_line(capsys)
    assert out.exists() and json.loads((out / "hskd.json").read_text())["status"] != "complete"  # kept, unfinished
    assert run_cli(*args, "--resume") == 0
    assert json.loads((out / "hskd.json").read_text())["status"] == "complete"


def test_other_crashes_are_not_called_a_full_disk(monkeypatch, tiny_glue, tiny_backbone, tmp_path):
    import transformers

    def broken(*_, **__):
        raise RuntimeError("something else")

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", broken)
    with pytest.raises(RuntimeError, match="something else"):
        run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                "--output-dir", tmp_path / "run", *TINY)

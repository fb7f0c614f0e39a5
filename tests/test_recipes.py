"""Every recipe end to end on tiny random-weight models, online and from a cache; stage plans;
resume after a kill; and a run under torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hskd.config import Settings
from hskd.knowledge import KnowledgeSpec, Plan
from hskd.recipes import recipe_defaults, recipe_stages
from tests.conftest import TINY, run_cli

ONLINE = [
    ("kd", []), ("tinybert", []), ("pkd-skip", []), ("pkd-last", []),
    ("mud", ["--knowledge", "2l_4t_0.5h", "--hsk-epochs", "1"]),
    ("ird", ["--ird-schedule", "all"]), ("ird", ["--ird-schedule", "progressive"]),
    ("ird", ["--ird-schedule", "stacked"]),
]


def _distill(tmp_path, tiny_glue, tiny_teacher, student, recipe, extra, source):
    out = tmp_path / f"{recipe}-{source[0].strip('-')}"
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, *source, "--student-model", student,
                   "--student-layers", "2", "--recipe", recipe, "--output-dir", out, *TINY, *extra)
    assert code == 0
    record = json.loads((out / "hskd.json").read_text())
    assert record["status"] == "complete" and record["recipe"] == recipe
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    return out, record


@pytest.mark.parametrize("recipe, extra", ONLINE, ids=lambda v: v if isinstance(v, str) else "-".join(v[-1:]))
def test_every_recipe_online(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, recipe, extra):
    out, record = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, recipe, extra, ["--teacher", tiny_teacher])
    losses = [key for stage in record["stages"] for key in stage]
    assert record["eval"]["main_metric"] == "accuracy"
    if recipe in ("tinybert", "mud"):
        # a 16-wide student learns a 32-wide teacher through a learned projection, saved too
        assert load_file(out / "projection.safetensors")["linear.weight"].shape == (32, 16)
    assert losses


@pytest.mark.parametrize("recipe, knowledge, extra", [
    ("kd", "1l_1t", []), ("mud", "2l_4t_0.5h", ["--hsk-epochs", "1"]),
    ("tinybert", None, []), ("pkd-skip", None, []), ("pkd-last", None, []), ("ird", None, ["--ird-schedule", "stacked"]),
])
def test_every_recipe_from_a_cache(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, recipe, knowledge, extra):
    cache = tmp_path / "cache"
    spec = ["--knowledge", knowledge] if knowledge else ["--recipe", recipe]
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--quiet",
                   "--output-dir", cache, "--student-layers", "2", *spec) == 0
    extra = extra + (["--knowledge", knowledge] if knowledge and recipe == "mud" else [])
    _, record = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, recipe, extra, ["--cache", cache])
    assert record["cache"] == str(cache) and record["cache_megabytes"] > 0


def test_ird_schedules_switch_layers_at_the_planned_epochs():
    s = Settings(**{**recipe_defaults("ird"), "stage_epochs": 2, "num_train_epochs": 3, "ird_schedule": "progressive"})
    plan = Plan(KnowledgeSpec(logits=True, hidden=True, attentions=True), ((1, 2), (2, 4), (3, 6)), 3, 6)

    def active(stage):
        return {t.pairs if t.pairs is None else tuple(t.pairs) for t in stage.objective.terms}

    stages = recipe_stages("ird", s, plan)
    assert [(st.name, st.epochs, active(st)) for st in stages] == [
        ("layer1", 2, {(0,)}), ("layer2", 2, {(1,)}), ("layer3", 2, {(2,)}), ("prediction", 3, {None})]
    assert {t.name: t.weight for t in stages[-1].objective.terms} == {"ce": 0.5, "kd": 0.5}
    assert {t.name for t in stages[0].objective.terms} == {"cosine", "attention_kl"}
    s.ird_schedule = "stacked"
    assert [active(st) for st in recipe_stages("ird", s, plan)][:3] == [{(0,)}, {(0, 1)}, {(0, 1, 2)}]
    s.ird_schedule = "all"
    assert [active(st) for st in recipe_stages("ird", s, plan)] == [{None}, {None}]


def test_progressive_run_trains_each_stage_for_its_epochs(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    _, record = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "ird",
                         ["--ird-schedule", "progressive", "--stage-epochs", "2"], ["--teacher", tiny_teacher])
    # 16 rows, batch 8: 2 steps an epoch
    assert [(r["stage"], r["global_step"]) for r in record["stages"]] == [
        ("layer1", 4), ("layer2", 4), ("prediction", 2)]


@pytest.mark.parametrize("source", ["teacher", "cache"])
def test_a_term_switched_off_by_a_zero_weight_leaves_the_others_training(tmp_path, tiny_glue, tiny_teacher,
                                                                         tiny_narrow, source):
    # --beta 0 drops IRD's [CLS] cosine: the batch still carries the teacher's [CLS] states, but
    # the student's forward no longer computes hidden states, so they must not be gathered
    s = Settings(**{**recipe_defaults("ird"), "beta": 0.0, "ird_schedule": "all"})
    plan = Plan(KnowledgeSpec(logits=True, hidden=True, attentions=True), ((1, 2), (2, 4)), 2, 4)
    assert {t.name for t in recipe_stages("ird", s, plan)[0].objective.terms} == {"attention_kl"}
    where = ["--teacher", tiny_teacher]
    if source == "cache":
        where = ["--cache", tmp_path / "cache"]
        assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--quiet",
                       "--output-dir", where[1], "--student-layers", "2", "--recipe", "ird") == 0
    _, record = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "ird",
                         ["--ird-schedule", "all", "--beta", "0"], where)
    assert [r["stage"] for r in record["stages"]] == ["internal", "prediction"]
    assert record["stages"][0]["train_loss"] > 0  # the attention KL still trains the student


def test_epoch_losses_and_the_convergence_rule():
    from transformers import TrainerControl, TrainerState

    from hskd.convergence import StageConvergence, epoch_mean_losses, has_converged

    # logs at steps 1, 4 (end of epoch 0), 6, 8 (end of epoch 1), 12 (end of epoch 2): each log is
    # the mean over the steps since the one before, so epoch 0's mean is (1*4 + 3*2) / 4
    history = [{"loss": 4.0, "epoch": 0.25, "step": 1}, {"loss": 2.0, "epoch": 1.0, "step": 4},
               {"eval_accuracy": 0.5, "epoch": 1.0, "step": 4}, {"loss": 1.5, "epoch": 1.5, "step": 6},
               {"loss": 1.3, "epoch": 2.0, "step": 8}, {"loss": 1.39, "epoch": 3.0, "step": 12},
               {"train_runtime": 1.0, "epoch": 3.0, "step": 12}]
    assert epoch_mean_losses(history) == pytest.approx({0: 2.5, 1: 1.4, 2: 1.39})
    assert not has_converged(2.5, 1.4, 0.01)  # 44 % lower: keep going
    assert has_converged(1.4, 1.39, 0.01)  # 0.7 % lower: converged
    assert has_converged(1.39, 1.5, 0.01)  # rising: converged

    def decide(log, epoch, tolerance=0.01):
        state, control = TrainerState(epoch=epoch, log_history=log), TrainerControl()
        StageConvergence(tolerance).on_epoch_end(None, state, control)
        return control.should_training_stop

    assert not decide(history[:2], 1.0)  # one epoch: nothing to compare
    assert not decide(history[:5], 2.0)  # epoch 1 is 44 % below epoch 0
    assert decide(history, 3.0)  # epoch 2 is 0.7 % below epoch 1
    assert not decide(history, 3.0, tolerance=0.005)
    control = TrainerControl()
    StageConvergence(0.01).on_step_end(None, TrainerState(epoch=2.0), control)
    assert control.should_log  # every epoch ends with a log of its own
    with pytest.raises(ValueError):
        StageConvergence(0.0)


def test_stage_convergence_ends_internal_stages_not_the_prediction_stage(tmp_path, tiny_glue, tiny_teacher,
                                                                         tiny_narrow):
    # tolerance 10: no epoch lowers the loss by 1000 %, so each internal stage stops after its
    # second epoch (the first one it can compare) instead of its 8; the prediction stage keeps
    # its 2 epochs (it has a dev metric; convergence does not apply)
    _, record = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "ird",
                         ["--ird-schedule", "progressive", "--stage-epochs", "8", "--stage-convergence", "10",
                          "--num-train-epochs", "2"], ["--teacher", tiny_teacher])
    # 16 rows, batch 8: 2 steps an epoch
    assert [(r["stage"], r["global_step"], r["max_steps"]) for r in record["stages"]] == [
        ("layer1", 4, 16), ("layer2", 4, 16), ("prediction", 4, 4)]
    internal = record["stages"][0]["epoch_train_loss"]
    assert list(internal) == ["0", "1"] and all(v > 0 for v in internal.values())
    assert "epoch_train_loss" not in record["stages"][-1]


class _Kill(TrainerCallback):
    """Simulates a kill right after the checkpoint at ``step`` is written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt("killed")


def test_a_stage_killed_after_it_converged_resumes_to_its_end(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    from hskd.pipeline import distill

    def settings(**kw):
        return Settings(task="SST-2", data_dir=str(tiny_glue), teacher=str(tiny_teacher), student_model=str(tiny_narrow),
                        student_layers="2", recipe="ird", output_dir=str(tmp_path / "ird"), batch_size=8, quiet=True,
                        logging_steps=1, **{**recipe_defaults("ird"), "stage_epochs": 8.0, "num_train_epochs": 1.0,
                                            "ird_schedule": "all", "stage_convergence": 10.0}, **kw)

    # tolerance 10: the internal stage converges after epoch 2 (step 4); the kill comes as epoch
    # 2's checkpoint is saved, before the stage has ended
    killed = settings()
    killed.callbacks = [_Kill(4)]
    with pytest.raises(KeyboardInterrupt):
        distill(killed)
    resumed = distill(settings(resume=True))
    assert [(r["stage"], r["global_step"]) for r in resumed["stages"]] == [("internal", 4), ("prediction", 2)]


def test_resume_reaches_the_planned_step_count_and_the_same_weights(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    from hskd.pipeline import distill

    def settings(out, **kw):
        return Settings(task="SST-2", data_dir=str(tiny_glue), teacher=str(tiny_teacher), student_model=str(tiny_narrow),
                        student_layers="2", recipe="tinybert", output_dir=str(out), num_train_epochs=3,
                        batch_size=4, save_steps=3, quiet=True, **recipe_defaults("tinybert"), **kw)

    whole = distill(settings(tmp_path / "whole"))
    killed = settings(tmp_path / "killed")
    killed.callbacks = [_Kill(6)]
    with pytest.raises(KeyboardInterrupt):
        distill(killed)
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = distill(settings(tmp_path / "killed", resume=True))
    assert resumed["stages"][0]["global_step"] == whole["stages"][0]["global_step"] == 12
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_distill_under_torchrun_two_processes(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "hskd.cli", "distill",
           "--task", "SST-2", "--data-dir", str(tiny_glue), "--teacher", str(tiny_teacher),
           "--student-model", str(tiny_narrow), "--student-layers", "2", "--recipe", "tinybert",
           "--output-dir", str(out), "--num-train-epochs", "2", "--batch-size", "4", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "hskd.json").read_text())
    # 16 rows, 2 processes x 4 per batch: 2 steps an epoch, 4 in all
    assert record["stages"][0]["global_step"] == 4
    assert (out / "model.safetensors").exists()


def test_narrow_random_student_with_projection(tmp_path, tiny_glue, tiny_teacher, tiny_backbone):
    from transformers import AutoConfig

    out, record = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_backbone, "tinybert",
                           ["--student-hidden-size", "16"], ["--teacher", tiny_teacher])
    config = AutoConfig.from_pretrained(out)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (16, 2, 64)
    assert load_file(out / "projection.safetensors")["linear.weight"].shape == (32, 16)
    assert record["layer_pairs"] == [[0, 0], [1, 2], [2, 4]]


def test_regression_task_finetune_and_kd(tmp_path, tiny_glue, tiny_backbone, tiny_narrow):
    teacher = tmp_path / "stsb-teacher"
    assert run_cli("finetune", "--task", "STS-B", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", teacher, *TINY) == 0
    out = tmp_path / "stsb-kd"
    assert run_cli("distill", "--task", "STS-B", "--data-dir", tiny_glue, "--teacher", teacher, "--recipe", "kd",
                   "--student-model", tiny_narrow, "--student-layers", "1", "--output-dir", out, *TINY) == 0
    record = json.loads((out / "hskd.json").read_text())
    assert set(record["eval"]["dev"]["dev"]) == {"pearson", "spearman"}
    assert record["eval"]["main_metric"] == "pearson"

"""Equivalence with the papers' official code: each test restates an official formula (written
out here from the paper and the code, with the source cited; not copied) on fixed random
tensors, including padding and ties, and checks that hskd with the matching option (the one
``--preset`` sets) gives the same value within 1e-6. docs/METHODS.md lists the departures."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hskd import losses
from hskd.config import resolve
from hskd.errors import HskdError
from hskd.knowledge import Knowledge, KnowledgeSpec, extract, zero_filled
from hskd.recipes import load_recipe, recipe_defaults, recipe_stages
from hskd.selectors import WIDTH
from hskd.terms import LOSSES, LossInputs, TermContext

CTX = TermContext(student_hidden=8, teacher_hidden=8)


def _logits(seed=0, batch=5, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g) * 3, torch.randn(batch, classes, generator=g) * 3


def _close(a, b):
    a, b = (v.detach() if isinstance(v, torch.Tensor) else v for v in (a, b))
    assert math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6), (float(a), float(b))


def test_pkd_soft_labels_are_klDivLoss_mean_times_t_squared():
    # PKD (intersun/PKD-for-BERT-Model-Compression, the KD loss of its training script): KLDivLoss
    # with its default reduction, i.e. the mean over batch x classes of p_t (log p_t - log p_s), times T².
    s, t = _logits()
    T = 10.0
    p_t = F.softmax(t / T, -1)
    official = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).mean() * T * T
    _close(losses.soft_label_loss(s, t, T, reduction="mean"), official)
    # hskd's default (batchmean) is C times heavier at the same alpha
    _close(losses.soft_label_loss(s, t, T), official * s.size(1))


@pytest.mark.parametrize("source", ["MUD prediction stage", "TinyBERT soft_cross_entropy"])
def test_mud_and_tinybert_prediction_loss_is_soft_ce_mean_without_t_squared(source):
    # MUD and TinyBERT (task_distill.py) both average -p_t · log p_s over batch x classes, at T,
    # without a T² factor.
    s, t = _logits(seed=1)
    T = 1.0 if source.startswith("MUD") else 2.0
    official = (-F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).mean()
    term = LOSSES["kd"](CTX, 1.0, temperature=T, form="soft_ce", reduction="mean", t_squared=False)
    _close(term(LossInputs(logits=s, labels=None, knowledge=Knowledge(logits=t))), official)


def test_soft_ce_and_kl_differ_by_the_teachers_entropy_only():
    s, t = _logits(seed=2)
    s.requires_grad_(True)
    kl = losses.soft_label_loss(s, t, 4.0)
    ce = losses.soft_label_loss(s, t, 4.0, form="soft_ce")
    p_t = F.softmax(t / 4.0, -1)
    entropy = -(p_t * p_t.log()).sum(-1).mean() * 16
    _close(ce - kl, entropy)
    g_kl, = torch.autograd.grad(kl, s)
    g_ce, = torch.autograd.grad(ce, s)
    assert torch.allclose(g_kl, g_ce, atol=1e-6)


def test_pkd_patience_raw_and_normalised():
    # PKD: patience loss = MSE (mean over batch, layers, dims) of the [CLS] states, L2-normalised
    # when normalize_patience is set (the paper), as they are otherwise (the script's default).
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 2, 8, generator=g), torch.randn(4, 2, 8, generator=g) * 5
    raw = ((s - t) ** 2).mean()
    norm = ((s / s.norm(dim=-1, keepdim=True) - t / t.norm(dim=-1, keepdim=True)) ** 2).mean()
    _close(losses.pkd_loss(s, t, normalize=False), raw)
    _close(losses.pkd_loss(s, t), norm)


def test_tinybert_hidden_mse_without_padding():
    # TinyBERT: rep loss = sum over mapped layers of MSELoss (mean over batch, tokens, dims).
    # Equal to hskd's when no position is padding (hskd leaves padding out; TinyBERT counts it).
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 2, 6, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g)
    official = sum(F.mse_loss(s[:, p], t[:, p]) for p in range(2))
    _close(losses.hidden_mse(s, t, torch.ones(3, 2, 6, dtype=torch.bool)), official)
    padded = torch.ones(3, 2, 6, dtype=torch.bool)
    padded[0, :, 4:] = False
    assert not math.isclose(float(losses.hidden_mse(s, t, padded)), float(official), rel_tol=1e-3)


@pytest.mark.parametrize("shared", [True, False])
def test_mud_width_loss_compares_whole_vectors_with_unkept_teacher_dims_zeroed(shared):
    # MUD: the teacher's state with its unselected dims set to 0 against the student's whole
    # vector, MSE over batch, tokens and all d dims; summed over layers.
    g = torch.Generator().manual_seed(5)
    b, p, k, d, w = 2, 2, 3, 8, 3
    student = torch.randn(b, p, k, d, generator=g)
    teacher_full = torch.randn(b, p, k, d, generator=g)
    if shared:
        dims = torch.tensor([0, 2, 5])
        keep = torch.zeros(d, dtype=torch.bool)
        keep[dims] = True
        kept = teacher_full[..., dims]
    else:
        dims = teacher_full.abs().topk(w, -1).indices
        keep = torch.zeros(b, p, k, d, dtype=torch.bool).scatter(-1, dims, True)
        kept = teacher_full.gather(-1, dims)
    official = sum(F.mse_loss(student[:, i], (teacher_full * keep)[:, i]) for i in range(p))
    mask = torch.ones(b, p, k, dtype=torch.bool)
    knowledge = Knowledge(hidden=kept, dim_index=dims, token_mask=mask)
    term = LOSSES["hidden_mse"](CTX, 1.0, width_loss="zeroed")
    x = LossInputs(logits=None, labels=None, knowledge=knowledge, student_hidden_full=student,
                   student_hidden=None)
    _close(term(x), official)
    assert torch.equal(zero_filled(kept, dims, d), teacher_full * keep)
    # hskd's default compares the kept dims only, so its value differs
    selected = student[..., dims] if shared else student.gather(-1, dims)
    assert not math.isclose(float(losses.hidden_mse(selected, kept, mask)), float(official), rel_tol=1e-3)


def test_attention_kl_per_example_average():
    # Aguilar et al. give no reduction. "examples": per example, the mean KL over its real query
    # rows and heads; then the mean over the batch; summed over layer pairs.
    g = torch.Generator().manual_seed(6)
    b, p, h, rows, keys = 3, 2, 2, 5, 5
    s = torch.randn(b, p, h, rows, keys, generator=g).softmax(-1)
    t = torch.randn(b, p, h, rows, keys, generator=g).softmax(-1)
    lengths = [5, 3, 2]
    row_mask = torch.zeros(b, p, rows, dtype=torch.bool)
    key_mask = torch.zeros(b, keys, dtype=torch.bool)
    for i, n in enumerate(lengths):
        row_mask[i, :, :n] = True
        key_mask[i, :n] = True
    official = 0.0
    for pair in range(p):
        per_example = []
        for i, n in enumerate(lengths):
            tt = t[i, pair, :, :n, :n]
            ss = s[i, pair, :, :n, :n]
            kl = (tt * ((tt + 1e-12).log() - (ss + 1e-12).log())).sum(-1)  # [heads, n]
            per_example.append(kl.mean())
        official += sum(per_example) / b
    _close(losses.attention_kl(s, t, row_mask, key_mask, average="examples"), official)
    pooled = losses.attention_kl(s, t, row_mask, key_mask)
    assert not math.isclose(float(pooled), float(official), rel_tol=1e-4)  # long examples weigh more


def _tiny_teacher():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    config._attn_implementation = "eager"  # so that it returns attention probabilities to compare with
    return BertForSequenceClassification(config).eval()


def _forward(teacher, ids: torch.Tensor):
    """The tiny teacher on ``ids`` (0 is padding): ``(mask, outputs with states and attentions)``."""
    mask = (ids != 0).long()
    with torch.no_grad():
        out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    return mask, out


def _padded_batch(teacher):
    # static padding to 7 positions (MUD and TinyBERT pad every example to max_seq_length)
    ids = torch.tensor([[2, 7, 9, 11, 6, 3, 0], [2, 5, 3, 0, 0, 0, 0]])
    return (ids, *_forward(teacher, ids))


def test_attention_ranking_by_scores_of_the_full_depth_map():
    # MUD (main.py, att_ttop12, its default): for student layer l the ranking attention is that of
    # teacher layer l·n_t/n_s (the T_top = n_t map), whatever T_top the hidden states use; the
    # embedding slot uses layer 1. Tokens are ranked by the pre-softmax [CLS] scores
    # q_cls·k_j/sqrt(d_head) averaged over heads; padding is never chosen here.
    teacher = _tiny_teacher()
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    spec = KnowledgeSpec(hidden=True, depth="uniform", length="attention", tokens=3, rank_layer="full-depth",
                         rank_by="scores", t_top=2)
    plan = spec.resolve(2, 3)  # hidden states from teacher layers 0, 1, 2 (T_top = 2)
    k = extract(plan, out, {"input_ids": ids, "attention_mask": mask}, teacher=teacher)
    def ranked(layer, i, n):
        att = teacher.bert.encoder.layer[layer].attention.self
        x = out.hidden_states[layer]
        heads, size = att.num_attention_heads, att.attention_head_size
        q = att.query(x[i:i + 1, :1]).view(1, 1, heads, size).transpose(1, 2)
        keys = att.key(x[i:i + 1]).view(1, 6, heads, size).transpose(1, 2)
        scores = (q @ keys.transpose(-1, -2)).squeeze(2).mean(1)[0] / math.sqrt(size)
        return scores[:n].argsort(descending=True, stable=True)[:3].tolist()

    # student layers 0, 1, 2 -> ranking attention of teacher layers 1, 2, 3 (0-based attention 0, 1, 2)
    for i in range(2):
        n = int(mask[i].sum())
        for pair, layer in enumerate([0, 1, 2]):
            got = k.token_index[i, pair][k.token_mask[i, pair]].tolist()
            assert got == ranked(layer, i, n)[: len(got)]
    assert k.token_mask[1].sum(-1).tolist() == [3] * len(plan.pairs)  # 3 real tokens in the short row


def test_width_selectors_of_muds_code():
    from hskd.selectors import bernoulli_uniforms, width_index

    # MUD (main.py, uniform_mask): dims round(i / f) for i < int(d·f)
    spec = KnowledgeSpec(hidden=True, width="uniform-stride", width_fraction=0.1)
    assert spec.kept_width(768) == 76
    assert width_index(spec, torch.zeros(768)).tolist() == [round(i / 0.1) for i in range(int(768 * 0.1))]
    # hskd's uniform keeps round(f·d) = 77 dims floor(i·d/77): the two share few dims
    ours = set(WIDTH["uniform"](torch.zeros(768), 77, 0).tolist())
    assert len(ours & {round(i / 0.1) for i in range(76)}) < 20
    # MUD (rand_mask): dim j kept when its uniform draw exceeds 1 - f (a Bernoulli(f) mask)
    for f in (0.1, 0.3):
        spec = KnowledgeSpec(hidden=True, width="random-bernoulli", width_fraction=f, seed=3)
        draw = bernoulli_uniforms(384, 3)
        official = set(torch.nonzero(draw > 1 - f).flatten().tolist())
        got = width_index(spec, torch.zeros(384)).tolist()
        assert set(got) == official and spec.kept_width(384) == len(official) != round(f * 384)
    small = width_index(KnowledgeSpec(hidden=True, width="random-bernoulli", width_fraction=0.1, seed=3),
                        torch.zeros(384)).tolist()
    assert got[: len(small)] == small  # a prefix serves any smaller fraction from one cache


def test_presets_set_the_official_values_and_flags_win():
    s = resolve({"preset": "mud", "task": "CoLA"}, None, recipe_defaults)
    assert (s.recipe, s.hsk_epochs, s.hsk_learning_rate, s.hsk_lr_scheduler) == ("mud", 30, 5e-5, "constant")
    assert (s.student_learning_rate, s.num_train_epochs, s.temperature, s.alpha) == (2e-5, 5.0, 1.0, 1.0)
    assert (s.kd_form, s.kd_reduction, s.kd_temperature_scaling) == ("soft_ce", "mean", "none")
    assert (s.rank_layer, s.rank_by, s.hidden_width_loss, s.save_steps) == ("full-depth", "scores", "zeroed", 50)
    assert s.hsk_padding == "include"
    from hskd.recipes import knowledge_spec

    assert knowledge_spec(resolve({"preset": "mud", "knowledge": "1l_10t_0.1h"}, None, recipe_defaults)).width \
        == "uniform-stride"
    mud_spec = knowledge_spec(resolve({"preset": "mud", "knowledge": "1l_10t_0.1h", "width_strategy": "magnitude"},
                                      None, recipe_defaults))
    assert (mud_spec.width, mud_spec.padding) == ("magnitude-batch", "include")
    assert resolve({"preset": "mud", "task": "STS-B"}, None, recipe_defaults).alpha == 0.0  # MSE to gold
    assert resolve({"preset": "mud", "task": "SST-2", "hsk_epochs": 2.0}, None, recipe_defaults).hsk_epochs == 2.0
    pkd = resolve({"preset": "pkd", "recipe": "pkd-last"}, None, recipe_defaults)
    assert (pkd.recipe, pkd.beta, pkd.student_learning_rate, pkd.num_train_epochs, pkd.max_seq_length) == \
        ("pkd-last", 500.0, 1e-5, 4.0, 128)
    assert (pkd.kd_reduction, pkd.pkd_states, pkd.alpha, pkd.temperature) == ("mean", "normalized", 0.7, 10.0)
    tiny = resolve({"preset": "tinybert", "recipe": "tinybert"}, None, recipe_defaults)
    assert tiny.recipe == "tinybert-2stage" and [st["name"] for st in load_recipe(tiny.recipe)["stages"]] == [
        "intermediate", "prediction"]
    ird = resolve({"preset": "ird"}, None, recipe_defaults)  # each internal stage "to convergence"
    assert (ird.recipe, ird.stage_convergence, ird.stage_epochs) == ("ird", 0.01, 10.0)
    assert resolve({"preset": "ird", "stage_epochs": 3.0}, None, recipe_defaults).stage_epochs == 3.0
    # 0 turns the preset's convergence test off: each stage then trains all its epochs
    assert resolve({"preset": "ird", "stage_convergence": 0}, None, recipe_defaults).stage_convergence == 0.0
    with pytest.raises(HskdError, match="stage_convergence must be at least 0"):
        resolve({"preset": "ird", "stage_convergence": -0.01}, None, recipe_defaults)
    with pytest.raises(HskdError, match="describes recipe"):
        resolve({"preset": "pkd", "recipe": "mud"}, None, recipe_defaults)


def test_named_options_reach_every_recipes_terms():
    s = resolve({"recipe": "pkd-skip", "kd_reduction": "mean", "kd_temperature_scaling": "none",
                 "pkd_states": "raw"}, None, recipe_defaults)
    plan = KnowledgeSpec(hidden=True, depth="skip", length="cls").resolve(3, 6)
    stage, = recipe_stages("pkd-skip", s, plan, TermContext(student_hidden=8, teacher_hidden=8))
    opts = {t.name: t.opts for t in stage.objective.terms}
    assert opts["kd"]["reduction"] == "mean" and opts["kd"]["t_squared"] is False
    assert opts["pkd"]["normalize"] is False
    mud = resolve({"preset": "mud", "task": "MRPC"}, None, recipe_defaults)
    hsk, prediction = recipe_stages("mud", mud, KnowledgeSpec(hidden=True).resolve(3, 6), CTX)
    assert hsk.scheduler == "constant" and hsk.epochs == 20 and hsk.learning_rate == 5e-5
    assert hsk.objective.full_width and prediction.scheduler == "linear"
    with pytest.raises(HskdError, match="form is one of kl, soft_ce"):
        LOSSES["kd"](CTX, 1.0, form="softce")


def test_tinybert_attention_scores_and_their_mse():
    # TinyBERT Eq. 3 (task_distill.py): per layer, MSE between student and teacher attention
    # scores Q·Kᵀ/√d_head + mask, with every entry <= -1e2 set to 0; summed over layers. Equal to
    # hskd's when nothing is padded.
    from hskd.models import attention_scores

    teacher = _tiny_teacher()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 8, 4]])
    mask, out = _forward(teacher, ids)
    got = attention_scores(teacher, out.hidden_states, mask, [0, 2])
    # the probabilities eager attention returns are the softmax of these scores
    assert torch.allclose(got.softmax(-1), torch.stack([out.attentions[0], out.attentions[2]], 1), atol=1e-6)
    g = torch.Generator().manual_seed(7)
    student = got + 0.3 * torch.randn(got.shape, generator=g)
    additive = (1 - mask[:, None, None, None, :].float()) * -10000.0
    s_masked = torch.where(student + additive <= -1e2, torch.zeros(()), student + additive)
    t_masked = torch.where(got + additive <= -1e2, torch.zeros(()), got + additive)
    official = sum(F.mse_loss(s_masked[:, p], t_masked[:, p]) for p in range(2))
    rows = torch.ones(2, 2, 5, dtype=torch.bool)
    _close(losses.attention_score_mse(student, got, rows, mask.bool()), official)


def test_tinybert_two_stage_recipe_distills_attention_scores_online_and_from_the_cache(tmp_path, tiny_glue,
                                                                                     tiny_teacher):
    from tests.conftest import TINY, run_cli

    common = ("--task", "SST-2", "--data-dir", tiny_glue, "--student-model", tiny_teacher, "--student-layers", "2",
              "--preset", "tinybert", "--hsk-epochs", "1", *TINY)
    assert run_cli("distill", *common, "--teacher", tiny_teacher, "--output-dir", tmp_path / "online") == 0
    import json

    record = json.loads((tmp_path / "online" / "hskd.json").read_text())
    assert [st["stage"] for st in record["stages"]] == ["intermediate", "prediction"]
    assert record["knowledge"]["attention_scores"] is True
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--preset",
                   "tinybert", "--student-layers", "2", "--quiet", "--output-dir", tmp_path / "cache") == 0
    assert run_cli("distill", *common, "--cache", tmp_path / "cache", "--output-dir", tmp_path / "cached") == 0
    online = json.loads((tmp_path / "online" / "hskd.json").read_text())["stages"][0]["train_loss"]
    cached = json.loads((tmp_path / "cached" / "hskd.json").read_text())["stages"][0]["train_loss"]
    assert math.isclose(online, cached, rel_tol=1e-2)  # the same knowledge either way (fp16 in the cache)


def test_seeds_run_one_student_per_seed_and_report_the_spread(tmp_path, capsys, tiny_glue, tiny_teacher):
    import json
    import shutil
    import statistics

    from tests.conftest import TINY, run_cli

    out = tmp_path / "seeds"
    args = ("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--student-model",
            tiny_teacher, "--student-layers", "2", "--recipe", "kd", "--seeds", "3,4", "--output-dir", out, *TINY)
    assert run_cli(*args) == 0
    summary = json.loads((out / "seeds.json").read_text())
    values = [json.loads((out / f"seed-{x}" / "hskd.json").read_text())["eval"]["main_value"] for x in (3, 4)]
    assert summary["seeds"] == [3, 4] and summary["metrics"]["accuracy"]["values"] == values
    assert math.isclose(summary["metrics"]["accuracy"]["mean"], statistics.fmean(values))
    assert math.isclose(summary["metrics"]["accuracy"]["std"], statistics.stdev(values))
    assert json.loads((out / "seed-4" / "hskd.json").read_text())["settings"]["seed"] == 4
    assert "| accuracy |" in capsys.readouterr().out and (out / "seeds.md").exists()
    first = (out / "seed-3" / "checkpoints").stat().st_mtime_ns
    assert run_cli(*args) == 0  # a rerun keeps the finished seeds
    assert (out / "seed-3" / "checkpoints").stat().st_mtime_ns == first
    # a finished seed whose checkpoints were deleted to save disk is read back, not trained again
    shutil.rmtree(out / "seed-3" / "checkpoints")
    model = (out / "seed-3" / "model.safetensors").stat().st_mtime_ns
    assert run_cli(*args) == 0
    assert not (out / "seed-3" / "checkpoints").exists()
    assert (out / "seed-3" / "model.safetensors").stat().st_mtime_ns == model
    assert json.loads((out / "seeds.json").read_text()) == summary
    capsys.readouterr()
    bad = [a if a != "3,4" else "3,3" for a in args]
    bad[bad.index(out)] = tmp_path / "bad"
    assert run_cli(*bad) == 2
    assert "bad --seeds '3,3'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_hskd_run_with_seeds_reports_each_model_over_the_seeds(tmp_path, capsys, tiny_glue, tiny_backbone):
    import json
    import statistics

    from tests.conftest import TINY, run_cli

    out = tmp_path / "run"
    assert run_cli("run", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone, "--student-model",
                   tiny_backbone, "--student-layers", "2", "--recipe", "kd", "--seeds", "5,6", "--output-dir", out,
                   *TINY) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [5, 6] and set(summary["models"]) == {"teacher", "student-finetune", "student"}
    for name, m in summary["models"].items():
        values = [json.loads((out / f"seed-{x}" / name / "hskd.json").read_text())["eval"]["main_value"]
                  for x in (5, 6)]
        assert m["metrics"]["accuracy"]["values"] == values
        assert math.isclose(m["metrics"]["accuracy"]["mean"], statistics.fmean(values))
    assert json.loads((out / "seed-6" / "teacher" / "hskd.json").read_text())["settings"]["seed"] == 6
    shown = capsys.readouterr().out
    assert "### teacher" in shown and "### student" in shown and "| accuracy |" in shown


def test_early_stopping_ends_a_stage_once_dev_stops_improving(tmp_path, tiny_glue, tiny_backbone):
    import json

    from tests.conftest import run_cli

    out = tmp_path / "t"
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--num-train-epochs", "8", "--batch-size", "8", "--learning-rate", "1e-9",  # dev never improves
                   "--early-stopping-patience", "2", "--quiet", "--output-dir", out) == 0
    stage = json.loads(next(out.glob("checkpoints/**/stage.json")).read_text())
    assert stage["max_steps"] == 16 and stage["global_step"] == 6  # epochs 2 and 3 did not improve on epoch 1


def test_hidden_mse_counts_padding_as_tinybert_and_mud_do():
    # TinyBERT (task_distill.py) and MUD (main.py): rep loss = sum over mapped layers of MSELoss
    # over the whole padded tensor [batch, max_seq_length, d], padding positions included, the
    # teacher's own states at those positions as targets.
    teacher = _tiny_teacher()
    ids, mask, out = _padded_batch(teacher)
    plan = KnowledgeSpec(hidden=True, depth="uniform", length="all", padding="include").resolve(3, 3)
    k = extract(plan, out, {"input_ids": ids, "attention_mask": mask}, teacher=teacher)
    assert bool(k.token_mask.all())
    g = torch.Generator().manual_seed(11)
    near = torch.stack([out.hidden_states[t] for _, t in plan.pairs], 1)  # close to the teacher where real,
    student = near + 0.1 * torch.randn(near.shape, generator=g) + (1 - mask)[:, None, :, None]  # off at padding
    official = sum(F.mse_loss(student[:, p], out.hidden_states[t]) for p, (_, t) in enumerate(plan.pairs))
    x = LossInputs(logits=None, labels=None, knowledge=k, student_hidden=student)
    _close(LOSSES["hidden_mse"](CTX, 1.0)(x), official)
    # hskd's default leaves the 5 padded positions of row 2 out, and its value differs
    default = extract(KnowledgeSpec(hidden=True, length="all").resolve(3, 3), out,
                      {"input_ids": ids, "attention_mask": mask}, teacher=teacher)
    assert int((~default.token_mask).sum()) == 5 * len(plan.pairs)
    x = LossInputs(logits=None, labels=None, knowledge=default, student_hidden=student)
    assert not math.isclose(float(LOSSES["hidden_mse"](CTX, 1.0)(x)), float(official), rel_tol=1e-3)


def test_left_and_attention_length_may_choose_padding_as_muds_code_does():
    # MUD (main.py, token_scheme left_first): rep[:, :k], padding or not. token_scheme attention:
    # topk over the head-averaged [CLS] attention, whose padded keys are 0 after the masked
    # softmax, so an example shorter than k gets its real tokens by rank, then padding positions.
    teacher = _tiny_teacher()
    ids, mask, out = _padded_batch(teacher)
    batch = {"input_ids": ids, "attention_mask": mask}
    left = extract(KnowledgeSpec(hidden=True, length="left", tokens=5, padding="include").resolve(3, 3),
                   out, batch, teacher=teacher)
    assert left.token_index[1, 0].tolist() == [0, 1, 2, 3, 4] and bool(left.token_mask.all())
    t = left.token_index.new_tensor([t for _, t in KnowledgeSpec(hidden=True).resolve(3, 3).pairs])
    for p, layer in enumerate(t.tolist()):
        assert torch.allclose(left.hidden[:, p], out.hidden_states[layer][:, :5])  # padding states kept
    spec = KnowledgeSpec(hidden=True, length="attention", tokens=5, padding="include")
    att = extract(spec.resolve(3, 3), out, batch, teacher=teacher)
    for p, (_, layer) in enumerate(spec.resolve(3, 3).pairs):
        probs = out.attentions[max(layer - 1, 0)].mean(1)[1, 0]  # example 2's [CLS] row, padded keys 0
        official = probs.argsort(descending=True, stable=True)[:5]  # ties (padding) in position order
        assert att.token_index[1, p].tolist() == official.tolist()
        assert att.token_index[1, p, 3:].tolist() == [3, 4] and bool(att.token_mask[1, p].all())
    # with MUD's ranking values (rank_by scores: pre-softmax scores, -10000 added at padded keys)
    # padding is ordered by its own scores, as MUD's topk orders it
    spec = KnowledgeSpec(hidden=True, length="attention", tokens=5, padding="include", rank_by="scores")
    att = extract(spec.resolve(3, 3), out, batch, teacher=teacher)
    for p, (_, layer) in enumerate(spec.resolve(3, 3).pairs):
        block = teacher.bert.encoder.layer[max(layer - 1, 0)].attention.self
        x = out.hidden_states[max(layer - 1, 0)][1:2]
        heads, size = block.num_attention_heads, block.attention_head_size
        q = block.query(x[:, :1]).view(1, 1, heads, size).transpose(1, 2)
        keys = block.key(x).view(1, 7, heads, size).transpose(1, 2)
        raw = (q.double() @ keys.double().transpose(-1, -2) / math.sqrt(size)).squeeze(2)  # [1, heads, seq]
        scores = (raw + (1 - mask[1]).double() * -10000.0).mean(1)[0]  # float64: no rounding near -10000
        assert att.token_index[1, p].tolist() == scores.topk(5).indices.tolist()
    # hskd's default never chooses padding: the 2 slots past the 3 real tokens are unfilled
    default = extract(KnowledgeSpec(hidden=True, length="left", tokens=5).resolve(3, 3), out, batch, teacher=teacher)
    assert default.token_mask[1, 0].tolist() == [True, True, True, False, False]


def test_magnitude_width_thresholds_over_the_batch_as_muds_code_does():
    # MUD (main.py, importance_mask_dynamic): per mapped layer, over the whole tensor [batch,
    # tokens, d]: n = int(f · numel); threshold = the n-th largest |h|; keep |h| >= threshold
    # (ties kept); the teacher's other entries set to 0; MSE against the student's whole vector.
    teacher = _tiny_teacher()
    ids = torch.tensor([[2, 7, 9, 11, 6], [2, 5, 3, 8, 4]])
    mask, out = _forward(teacher, ids)
    # round the states so that ties straddle the threshold
    states = tuple((h * 4).round() / 4 for h in out.hidden_states)
    out.hidden_states = states
    f = 0.3
    spec = KnowledgeSpec(hidden=True, length="all", width="magnitude-batch", width_fraction=f)
    plan = spec.resolve(3, 3)
    k = extract(plan, out, {"input_ids": ids, "attention_mask": mask}, teacher=teacher)
    assert k.dim_index is None and spec.kept_width(16) == 16
    g = torch.Generator().manual_seed(12)
    student = torch.randn(2, len(plan.pairs), 5, 16, generator=g)
    official, ties = 0.0, 0
    for p, (_, t) in enumerate(plan.pairs):
        rep = states[t]
        n = int(f * rep.nelement())
        threshold = rep.abs().view(-1).topk(n)[0][-1]
        keep = rep.abs() >= threshold
        ties += int(keep.sum()) - n
        official = official + F.mse_loss(student[:, p], rep * keep)
    assert ties > 0  # the test exercises MUD's keeping of ties
    x = LossInputs(logits=None, labels=None, knowledge=k, student_hidden=student)
    _close(LOSSES["hidden_mse"](CTX, 1.0)(x), official)
    # with padding left out (hskd's default), the count and the threshold take the real entries only
    ids[1, 3:] = 0
    mask, out = _forward(teacher, ids)
    k = extract(plan, out, {"input_ids": ids, "attention_mask": mask}, teacher=teacher)
    for p, (_, t) in enumerate(plan.pairs):
        real = out.hidden_states[t][mask.bool()]  # [real tokens, d]
        threshold = real.abs().view(-1).topk(int(f * real.nelement()))[0][-1]
        kept = k.hidden[:, p][mask.bool()]
        assert torch.equal(kept, real * (real.abs() >= threshold)) and not k.hidden[1, p, 3:].any()
    from hskd.cache import refuse_uncacheable

    with pytest.raises(HskdError, match="not cached"):
        refuse_uncacheable(spec)
    # nor served from a cache of every dimension, which holds no batch's threshold
    from hskd.cache_reader import CacheReader

    reader = CacheReader.__new__(CacheReader)
    reader._plans = {}
    with pytest.raises(HskdError, match="not cached"):
        reader.serving(plan)


def test_tinybert_attention_score_mse_counts_padded_rows_and_keys():
    # TinyBERT (task_distill.py): MSELoss over the whole [batch, heads, seq, seq] score tensor of
    # each mapped layer, masked entries (<= -1e2 after adding the mask) set to 0 on both sides.
    from hskd.models import attention_scores

    teacher = _tiny_teacher()
    ids, mask, out = _padded_batch(teacher)
    with torch.no_grad():
        t_scores = attention_scores(teacher, out.hidden_states, mask, [0, 1, 2])
    g = torch.Generator().manual_seed(13)
    keys = mask[:, None, None, None, :].float()
    s_scores = (t_scores + 0.3 * torch.randn(t_scores.shape, generator=g)) * keys  # student side zeroed too
    official = sum(F.mse_loss(s_scores[:, p], t_scores[:, p]) for p in range(3))
    pairs = ((1, 1), (2, 2), (3, 3))
    k = Knowledge(attentions=t_scores, token_mask=torch.ones(2, 3, 7, dtype=torch.bool))
    x = LossInputs(logits=None, labels=None, knowledge=k, student_attentions=s_scores, attention_mask=mask,
                   layer_pairs=pairs, include_padding=True)
    term = LOSSES["attention_mse"](TermContext(student_hidden=16, student_heads=2, teacher_heads=2), 1.0)
    _close(term(x), official)
    x.include_padding = False
    assert not math.isclose(float(term(x)), float(official), rel_tol=1e-3)


def test_padding_included_online_and_from_a_cache_and_a_mismatched_cache_is_refused(tmp_path, tiny_glue,
                                                                                   tiny_teacher, capsys):
    import json

    import numpy as np

    from tests.conftest import TINY, run_cli

    common = ("--task", "SST-2", "--data-dir", tiny_glue, "--student-model", tiny_teacher, "--student-layers", "2",
              "--recipe", "mud", "--knowledge", "2l_9t", "--max-seq-length", "10", "--hsk-epochs", "1",
              "--hsk-padding", "include", *TINY)
    assert run_cli("distill", *common, "--teacher", tiny_teacher, "--output-dir", tmp_path / "online") == 0
    cache = ("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--knowledge", "2l_9t",
             "--max-seq-length", "10", "--student-layers", "2", "--quiet")  # examples of 7 tokens: 2 padded slots
    assert run_cli(*cache, "--hsk-padding", "include", "--output-dir", tmp_path / "cache") == 0
    assert run_cli(*cache, "--output-dir", tmp_path / "cache-default") == 0
    index = np.load(tmp_path / "cache" / "token_index.npy")
    assert (index >= 0).all() and (np.load(tmp_path / "cache-default" / "token_index.npy") < 0).any()
    # the stored padding slots are bytes, not knowledge: both caches keep the same share of the HSK
    padded, default = (json.loads((tmp_path / c / "manifest.json").read_text()) for c in ("cache", "cache-default"))
    assert padded["hsk_fraction"] == pytest.approx(default["hsk_fraction"]) and padded["hsk_fraction"] <= 1
    from hskd.cache import CacheReader
    from hskd.config import Settings
    from hskd.data import load_data
    from hskd.sweep import train_lengths

    s = Settings(task="SST-2", data_dir=str(tiny_glue), teacher=str(tiny_teacher))
    data, reader = load_data(s), CacheReader(tmp_path / "cache")
    lengths = train_lengths(s, data, 10, reader)
    plan = reader.spec.resolve(2, reader.manifest["teacher_layers"])
    assert reader.hsk_fraction(plan, lengths) == pytest.approx(padded["hsk_fraction"])  # what sweep/search report
    assert reader.hsk_fraction(plan) > padded["hsk_fraction"]  # the padding slots, counted without the lengths
    assert train_lengths(s, data, 10, CacheReader(tmp_path / "cache-default")) is None
    assert run_cli("distill", *common, "--cache", tmp_path / "cache", "--output-dir", tmp_path / "cached") == 0
    online = json.loads((tmp_path / "online" / "hskd.json").read_text())["stages"][0]["train_loss"]
    cached = json.loads((tmp_path / "cached" / "hskd.json").read_text())["stages"][0]["train_loss"]
    assert math.isclose(online, cached, rel_tol=1e-2)  # the same padded knowledge either way
    capsys.readouterr()
    assert run_cli("distill", *common, "--cache", tmp_path / "cache-default", "--output-dir", tmp_path / "bad") == 2
    assert "--hsk-padding exclude, not include" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_hsk_padding_fingerprints_as_absent_at_its_default_and_never_in_finetuning():
    from hskd.runs import fingerprint_settings

    base = resolve({"recipe": "mud", "knowledge": "1l_10t"}, None, recipe_defaults)
    explicit = resolve({"recipe": "mud", "knowledge": "1l_10t", "hsk_padding": "exclude"}, None, recipe_defaults)
    include = resolve({"recipe": "mud", "knowledge": "1l_10t", "hsk_padding": "include"}, None, recipe_defaults)
    assert fingerprint_settings(explicit, "distill") == fingerprint_settings(base, "distill")
    assert fingerprint_settings(include, "distill")["hsk_padding"] == "include"
    # a teacher does not depend on it, so `hskd run` reuses teachers made before it existed
    assert fingerprint_settings(include, "finetune") == fingerprint_settings(base, "finetune")


def test_hskd_run_distills_online_what_no_cache_can_hold():
    from hskd.main_job import _cacheable

    mud = {"recipe": "mud", "knowledge": "1l_10t_0.1h", "preset": "mud"}
    assert _cacheable(resolve(mud, None, recipe_defaults))
    assert not _cacheable(resolve({**mud, "width_strategy": "magnitude"}, None, recipe_defaults))  # batch-wide
    with pytest.raises(HskdError, match="bad knowledge budget"):  # a bad spec is still refused before training
        _cacheable(resolve({**mud, "knowledge": "ten tokens"}, None, recipe_defaults))


def test_preset_mud_reaches_a_yaml_knowledge_mapping_and_sweep_points():
    # README: --preset mud maps the width names to MUD's own selectors and ranks by MUD's scores;
    # that must hold for the YAML mapping form of --knowledge and for sweep/search points too
    from hskd.recipes import knowledge_spec
    from hskd.sweep import Point, point_spec

    mapping = {"hidden": True, "depth": "uniform", "layers": 1, "length": "attention", "tokens": 10,
               "width": "uniform", "width_fraction": 0.1}
    spec = knowledge_spec(resolve({"preset": "mud", "knowledge": mapping}, None, recipe_defaults))
    assert (spec.width, spec.rank_by, spec.rank_layer, spec.padding) == ("uniform-stride", "scores", "full-depth",
                                                                         "include")
    own = knowledge_spec(resolve({"preset": "mud", "knowledge": {**mapping, "rank_by": "probs"}}, None,
                                 recipe_defaults))
    assert own.rank_by == "probs"  # what the mapping says wins over the preset
    plain = knowledge_spec(resolve({"knowledge": mapping}, None, recipe_defaults))
    assert (plain.width, plain.rank_by, plain.rank_layer) == ("uniform", "probs", "mapped")
    s = resolve({"preset": "mud", "width_strategy": "magnitude"}, None, recipe_defaults)
    assert point_spec(Point("width", 4, None, 0.1), s, 64).width == "magnitude-batch"
    s = resolve({"preset": "mud"}, None, recipe_defaults)
    p = point_spec(Point("joint", 1, 10, 0.1), s, 64)
    assert (p.width, p.rank_by, p.rank_layer) == ("uniform-stride", "scores", "full-depth")
    assert point_spec(Point("width", 4, None, 1.0), s, 64).width == "all"


@pytest.mark.parametrize("preset, recipe", [("mud", "mud"), ("tinybert", "tinybert")])
def test_regression_prediction_stage_is_mse_to_the_gold_score(preset, recipe):
    # MUD (main.py, the prediction stage for STS-B) and TinyBERT (task_distill.py, output_mode
    # "regression") train the prediction stage on MSELoss(student prediction, gold score) alone.
    from hskd.recipes import recipe_spec

    s = resolve({"preset": preset, "recipe": recipe, "task": "STS-B"}, None, recipe_defaults)
    assert s.alpha == 0.0
    plan = recipe_spec(s.recipe, s).resolve(3, 6)
    prediction = recipe_stages(s.recipe, s, plan, CTX)[-1]
    g = torch.Generator().manual_seed(11)
    pred, teacher = torch.randn(6, 1, generator=g) * 2, torch.randn(6, 1, generator=g) * 2
    gold = torch.rand(6, generator=g) * 5
    total, _ = prediction.objective(LossInputs(logits=pred, labels=gold, knowledge=Knowledge(logits=teacher)))
    _close(total, ((pred.squeeze(-1) - gold) ** 2).mean())
    # hskd's default: (1 - α)·MSE(gold) + α·MSE(teacher), with mud's α = 1 the teacher's alone
    d = resolve({"recipe": "mud", "task": "STS-B", "knowledge": "1l_10t_0.1h"}, None, recipe_defaults)
    default, _ = recipe_stages("mud", d, plan, CTX)[-1].objective(
        LossInputs(logits=pred, labels=gold, knowledge=Knowledge(logits=teacher)))
    _close(default, ((pred - teacher) ** 2).mean())


def test_tinybert_preset_stage_settings_and_mud_warmup():
    # TinyBERT's README: the intermediate stage at a constant lr 5e-5 for 10 epochs, then the
    # prediction stage at lr 3e-5 for 3 epochs; MUD's prediction stage has no warm-up
    from hskd.recipes import recipe_spec

    s = resolve({"preset": "tinybert", "recipe": "tinybert", "task": "SST-2"}, None, recipe_defaults)
    plan = recipe_spec(s.recipe, s).resolve(3, 6)
    # a distillation job trains at the student learning rate (jobs.train_job's learning_rate)
    job = dataclasses.replace(s, learning_rate=s.student_learning_rate)
    intermediate, prediction = recipe_stages(s.recipe, job, plan, CTX)
    assert (intermediate.epochs, intermediate.learning_rate, intermediate.scheduler) == (10.0, 5e-5, "constant")
    assert (prediction.epochs, prediction.learning_rate) == (3.0, 3e-5)
    assert [t.name for t in intermediate.objective.terms] == ["attention_mse", "hidden_mse"]
    assert not intermediate.select_best and [t.name for t in prediction.objective.terms] == ["kd"]  # alpha 1
    assert resolve({"preset": "mud"}, None, recipe_defaults).warmup_ratio == 0.0


def test_attention_kl_average_reaches_the_ird_term():
    from hskd.recipes import recipe_spec

    for average in ("rows", "examples"):
        flags = {"recipe": "ird"} if average == "rows" else {"recipe": "ird", "attention_kl_average": average}
        s = resolve(flags, None, recipe_defaults)
        stages = recipe_stages("ird", s, recipe_spec("ird", s).resolve(3, 6), CTX)
        terms = [t for st in stages for t in st.objective.terms if t.name == "attention_kl"]
        assert terms and all(t.opts.get("average", "rows") == average for t in terms)


def test_online_teacher_is_in_eval_mode_whatever_the_trainer_did():
    # MUD (main.py) and TinyBERT (task_distill.py) leave the teacher in train mode, so dropout
    # changes its targets from one call to the next; hskd (METHODS row 14) keeps it in eval mode.
    from transformers import BertConfig, BertForSequenceClassification

    from hskd.sources import OnlineTeacher

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.5)
    teacher = BertForSequenceClassification(config)
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():  # the official codes' train-mode teacher: two calls, two targets
        assert not torch.equal(teacher.train()(**inputs).logits, teacher(**inputs).logits)
    source = OnlineTeacher(teacher, KnowledgeSpec(hidden=True).resolve(3, 3), sep_token_id=3)
    teacher.train()  # as Trainer.train() may do to every module it reaches
    first, second = source(inputs), source(inputs)
    assert not teacher.training
    assert torch.equal(first.logits, second.logits) and torch.equal(first.hidden, second.hidden)
    assert not first.logits.requires_grad


def test_training_batches_are_shuffled_length_groups_not_pkds_sequential_order(tmp_path):
    # PKD (NLI_KD_training.py) trains on a SequentialSampler: the same order every epoch (METHODS
    # row 17). hskd's stages ask the Trainer for length-grouped batches, drawn in a random order;
    # the Trainer's own --train_sampling_strategy sequential, passed through, gives PKD's order.
    from torch.utils.data import SequentialSampler
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from hskd.cli import _settings, build_parser
    from hskd.recipes import Stage
    from hskd.tasks import get_task
    from hskd.terms import Objective
    from hskd.train import training_arguments

    s = resolve({"recipe": "kd", "device": "cpu"}, None, recipe_defaults)
    args = training_arguments(tmp_path, Stage("kd", 1.0, 1e-4, Objective.of(CTX, ce=1.0)), get_task("SST-2"), s,
                              select=True, has_dev=True)
    assert args.train_sampling_strategy == "group_by_length"
    lengths = [3, 9, 4, 12, 7, 5, 11, 6, 8, 10, 2, 13] * 4
    orders = [list(LengthGroupedSampler(4, lengths=lengths, generator=torch.Generator().manual_seed(epoch)))
              for epoch in (0, 1)]
    assert orders[0] != list(range(len(lengths))) and orders[0] != orders[1]
    assert sorted(orders[0]) == list(range(len(lengths)))  # every example once an epoch

    argv = ["distill", "--recipe", "kd", "--device", "cpu", "--train_sampling_strategy", "sequential"]
    pkd_order = _settings(*build_parser().parse_known_args(argv))
    args = training_arguments(tmp_path, Stage("kd", 1.0, 1e-4, Objective.of(CTX, ce=1.0)), get_task("SST-2"),
                              pkd_order, select=True, has_dev=True)
    rows = [{"input_ids": [2] * n, "labels": 0} for n in lengths]
    sampler = Trainer(model=_tiny_teacher(), args=args, train_dataset=rows, eval_dataset=rows)._get_train_sampler()
    assert isinstance(sampler, SequentialSampler) and list(sampler) == list(range(len(lengths)))


def test_width_selection_applies_from_the_first_batch():
    # MUD (main.py) builds its width mask in step 0 and applies it from step 1, so its first update
    # distils the whole vectors (METHODS row 6, not offered). hskd's selectors are stateless: the
    # first batch's knowledge already holds only the kept dims.
    teacher = _tiny_teacher()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask, out = _forward(teacher, ids)
    plan = KnowledgeSpec(hidden=True, width="uniform", width_fraction=0.25).resolve(3, 3)
    first = extract(plan, out, {"input_ids": ids, "attention_mask": mask}, 3, teacher=teacher)
    dims = torch.arange(4) * 16 // 4  # floor(i·d/w), as hskd's uniform width keeps
    assert first.hidden.shape[-1] == 4 and first.dim_index.tolist() == dims.tolist()
    torch.testing.assert_close(first.hidden[0, -1, 0], out.hidden_states[3][0, 0, dims])

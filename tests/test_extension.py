"""Extension points: a loss term defined in this file and registered through --plugin, trained
from a YAML recipe; the built-in recipes as data; the two methods added through the registries
(MiniLM relations, a contrastive term with trainable parameters); settings generated flags."""

import json

import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from hskd.config import Settings
from hskd.knowledge import KnowledgeSpec
from hskd.models import attention_relations
from hskd.recipes import load_recipe, recipe_names, recipes_table
from hskd.terms import LOSSES, LossTerm, loss_term
from hskd.terms_minilm import relation_kl
from tests.conftest import REPO, TINY, run_cli


@loss_term("test_logit_l2")
class LogitL2(LossTerm):
    """A user's term: a small L2 penalty on the student's logits (needs no teacher knowledge)."""

    options = {"scale": 1.0}

    def loss(self, x):
        return self.opts["scale"] * x.logits.float().pow(2).mean()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hskd: error: "), err
    return err[0]


def _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, recipe, *extra, name="out"):
    out = tmp_path / name
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--student-model", tiny_narrow, "--student-layers", "2", "--recipe", recipe, "--output-dir", out,
                   *TINY, *extra)
    return code, out


def test_a_plugin_term_trains_from_a_yaml_recipe(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    LOSSES._parts.pop("test_logit_l2")  # registered only through --plugin below
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({
        "source": "a test", "defaults": {"alpha": 0.5, "temperature": 2.0},
        "knowledge": {"logits": True},
        "stages": [{"name": "mine", "terms": [{"loss": "kd", "weight": "alpha", "temperature": "temperature"},
                                              {"loss": "test_logit_l2", "weight": 0.1, "scale": 2.0}]}]}))
    code, out = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, str(recipe),
                         "--plugin", REPO / "tests" / "test_extension.py")
    assert code == 0 and "test_logit_l2" in LOSSES
    record = json.loads((out / "hskd.json").read_text())
    assert [s["stage"] for s in record["stages"]] == ["mine"]
    assert record["settings"]["recipe_definition"]["stages"][0]["name"] == "mine"
    state = json.loads(next(out.glob("checkpoints/00-mine/checkpoint-*/trainer_state.json")).read_text())
    logged = [h for h in state["log_history"] if "loss_test_logit_l2" in h]
    assert logged and all(h["loss_test_logit_l2"] > 0 for h in logged) and "loss_kd" in logged[0]
    assert "loss_ce" not in logged[0]  # the recipe has no CE term


def test_unknown_terms_and_recipes_name_the_registered_ones(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_narrow):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"name": "x", "terms": [{"loss": "hiden_mse"}]}]}))
    code, out = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, str(recipe))
    line = _error_line(capsys)
    assert code == 2 and "unknown loss term 'hiden_mse': use one of ce, kd, hidden_mse" in line and not out.exists()
    code, _ = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "kdd")
    assert code == 2 and "unknown recipe 'kdd': use one of finetune, kd" in _error_line(capsys)
    recipe.write_text(yaml.safe_dump({"knowledge": {"logits": True},
                                      "stages": [{"name": "x", "terms": [{"loss": "hidden_mse"}]}]}))
    code, _ = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, str(recipe))
    assert code == 2 and "'hidden_mse' needs hidden" in _error_line(capsys)


def test_builtin_recipes_are_data_and_the_methods_table_matches_them(tmp_path, capsys):
    assert {"finetune", "kd", "tinybert", "mud", "pkd-skip", "pkd-last", "ird", "minilm", "contrastive"} <= set(
        recipe_names())
    for name in recipe_names():
        definition = load_recipe(name)
        assert definition["source"] and definition["stages"]
        for stage in definition["stages"]:
            assert all(term["loss"] in LOSSES for term in stage["terms"])
    assert recipes_table() in (REPO / "docs" / "METHODS.md").read_text(), "regenerate the table in docs/METHODS.md"
    assert run_cli("recipes", "--show", "pkd-skip") == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    (tmp_path / "pkd.yaml").write_text(yaml.safe_dump(shown))
    assert load_recipe(str(tmp_path / "pkd.yaml"))["stages"] == load_recipe("pkd-skip")["stages"]


def test_attention_relations_equal_eager_attention_and_the_kl_formula():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, attn_implementation="eager")
    model = BertModel(config).eval()
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    rel = attention_relations(model, out.hidden_states, mask, relation_heads=4)
    assert rel.shape == (2, 2, 4, 7, 7)
    assert torch.allclose(rel[:, 0], out.attentions[-1], atol=1e-5)  # MiniLM Eq. 2 is the model's attention
    value = model.encoder.layer[-1].attention.self.value(out.hidden_states[-2]).view(2, 7, 4, 4).transpose(1, 2)
    scores = value @ value.transpose(-1, -2) / 2.0 + (1 - mask[:, None, None, :].float()) * -1e9
    assert torch.allclose(rel[:, 1], scores.softmax(-1), atol=1e-5)  # Eq. 4: softmax(V·Vᵀ/√d_r)
    s, t = torch.rand(2, 4, 7, 7).softmax(-1), torch.rand(2, 4, 7, 7).softmax(-1)
    t = t * mask[:, None, None, :]
    t = t / t.sum(-1, keepdim=True)
    kl = (t * (t.clamp_min(1e-12).log() - s.log())).sum(-1)  # [b, h, rows]
    want = (kl * mask[:, None, :]).sum() / (mask.sum() * 4)
    assert torch.allclose(relation_kl(s, t, mask.bool()), want, atol=1e-6)


def test_minilm_and_contrastive_train_and_checkpoint_their_parts(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    code, out = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "minilm", "--hsk-epochs", "1", name="minilm")
    assert code == 0
    record = json.loads((out / "hskd.json").read_text())
    assert [s["stage"] for s in record["stages"]] == ["relations", "prediction"]
    state = json.loads(next(out.glob("checkpoints/00-relations/checkpoint-*/trainer_state.json")).read_text())
    assert all(h["loss_minilm_attention"] > 0 and h["loss_minilm_value"] > 0
               for h in state["log_history"] if "loss" in h)
    code, out = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "contrastive", name="crd")
    assert code == 0
    weights = load_file(out / "checkpoints" / "00-contrastive" / "final.safetensors")
    head = weights["terms.stage0_contrastive.student_head.weight"]
    assert head.shape == (128, 32)  # teacher width (the student arrives projected) -> 128
    bank = weights["terms.stage0_contrastive.bank"]
    assert bank.shape == (16, 128) and torch.allclose(bank.norm(dim=-1), torch.ones(16), atol=1e-4)


def test_minilm_from_a_cache_is_refused_in_one_line(tmp_path, capsys, tiny_glue, tiny_teacher):
    code = run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--recipe",
                   "minilm", "--output-dir", tmp_path / "c", "--quiet")
    assert code == 2 and "not cached" in _error_line(capsys) and not (tmp_path / "c").exists()


def test_settings_make_the_flags_and_trainer_fields_pass_through(tmp_path, capsys, tiny_glue, tiny_teacher,
                                                                 tiny_narrow):
    code, out = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "kd", "--save_total_limit", "1",
                         "--adam-beta2", "0.98")
    assert code == 0
    args = torch.load(next(out.glob("checkpoints/*/checkpoint-*/training_args.bin")), weights_only=False)
    assert args.save_total_limit == 1 and args.adam_beta2 == 0.98
    assert yaml.safe_load((out / "config.yaml").read_text())["training_args"] == {"save_total_limit": 1,
                                                                                  "adam_beta2": 0.98}
    code, _ = _distill(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, "kd", "--no-such-flag", "3", name="x")
    assert code == 2 and "unrecognized argument --no-such-flag" in _error_line(capsys)
    config = tmp_path / "c.yaml"
    config.write_text("overwrite: 'false'\n")
    assert run_cli("distill", "--config", config) == 2
    assert "overwrite must be true or false" in _error_line(capsys)
    assert run_cli("distill", "--batch-size", "0", "--output-dir", tmp_path / "y") == 2
    assert "batch_size must be at least 1" in _error_line(capsys)


def test_a_spec_resolves_once_into_a_plan():
    plan = KnowledgeSpec(hidden=True, layers=2, length="left", tokens=4, width="uniform",
                         width_fraction=0.25).resolve(3, 6)
    assert plan.pairs == ((2, 4), (3, 6)) and plan.tokens(64) == 4 and plan.width(384) == 96
    assert plan.logits_only().pairs == () and not plan.logits_only().needs_states
    assert Settings().training_args == {}

"""The built-in recipes, as data. Each is what a user's ``--recipe my_recipe.yaml`` holds:

- ``source``: the paper (and, for defaults, the code) it follows;
- ``defaults``: settings it changes unless the user sets them (published values);
- ``knowledge``: ``null`` (none), a :class:`hskd.knowledge.KnowledgeSpec` mapping (a string
  ``$name`` is the setting ``name``), or ``{builder: NAME}`` (a registered knowledge builder);
- ``stages``: each with ``name``, ``epochs`` and ``learning_rate`` (expressions over the
  settings; default ``num_train_epochs`` and the job's learning rate), ``select_best`` (keep the
  best dev checkpoint; default true), ``scheduler`` (``linear`` or ``constant``; default
  linear), optional ``schedule`` (``all``, ``progressive`` or
  ``stacked``: one stage per layer pair, Aguilar et al.), and ``terms``: ``{loss: NAME, weight:
  EXPR, pairs: [...], <option>: EXPR}``.

Expressions are numbers or arithmetic over setting names (``1 - alpha``).
"""

from __future__ import annotations


def _pkd(depth: str) -> dict:
    """PKD-Skip and PKD-Last differ only in their layer map."""
    return {
        "source": f"Sun et al. 2019, Patient KD (EMNLP), Sec. 3.2, PKD-{depth.title()}; T, alpha, beta from the "
                  "authors' code",
        "defaults": {"alpha": 0.7, "temperature": 10.0, "beta": 100.0},
        "knowledge": {"logits": True, "hidden": True, "depth": depth, "length": "cls"},
        "stages": [{"name": f"pkd-{depth}", "terms": [*KD_TERMS, {"loss": "pkd", "weight": "beta"}]}],
    }


KD_TERMS = [{"loss": "ce", "weight": "1 - alpha"}, {"loss": "kd", "weight": "alpha", "temperature": "temperature"}]
PREDICTION = {"name": "prediction", "terms": KD_TERMS}

BUILTIN: dict[str, dict] = {
    "finetune": {
        "source": "plain fine-tuning on gold labels (the student baseline; how the teacher is made)",
        "knowledge": None,
        "stages": [{"name": "finetune", "terms": [{"loss": "ce"}]}],
    },
    "kd": {
        "source": "Hinton et al. 2015, Distilling the Knowledge in a Neural Network, Sec. 2",
        "defaults": {"alpha": 0.5, "temperature": 4.0},
        "knowledge": {"logits": True},
        "stages": [{"name": "kd", "terms": KD_TERMS}],
    },
    "tinybert": {
        "source": "Jiao et al. 2020, TinyBERT, Eq. 7 (hidden MSE, uniform map, fit_dense projection); one stage",
        "defaults": {"alpha": 0.5, "temperature": 4.0, "beta": 1.0},
        "knowledge": {"logits": True, "hidden": True, "depth": "uniform", "t_top": "$t_top"},
        "stages": [{"name": "tinybert", "terms": [*KD_TERMS, {"loss": "hidden_mse", "weight": "beta"}]}],
    },
    "tinybert-2stage": {
        "source": "Jiao et al. 2020, TinyBERT, Eq. 3, 7, 9 and task_distill.py: intermediate layers (attention-score "
                  "MSE + hidden MSE, embeddings included), then the prediction layer; --preset tinybert",
        "defaults": {"alpha": 1.0, "temperature": 1.0, "beta": 1.0},
        "knowledge": {"logits": True, "hidden": True, "attentions": True, "attention_scores": True,
                      "depth": "uniform", "t_top": "$t_top"},
        "stages": [{"name": "intermediate", "epochs": "hsk_epochs", "learning_rate": "hsk_learning_rate",
                    "scheduler": "$hsk_lr_scheduler", "select_best": False,
                    "terms": [{"loss": "attention_mse", "weight": 1.0},
                                                    {"loss": "hidden_mse", "weight": "beta"}]}, PREDICTION],
    },
    "mud": {
        "source": "Liu et al. 2021, Marginal Utility Diminishes (ACL), Sec. 3-4: compressed HSK, then prediction",
        "defaults": {"alpha": 1.0, "temperature": 1.0, "beta": 1.0, "knowledge": "1l_10t_0.1h"},
        "knowledge": {"builder": "budget"},
        "stages": [{"name": "hsk", "epochs": "hsk_epochs", "learning_rate": "hsk_learning_rate", "select_best": False,
                    "scheduler": "$hsk_lr_scheduler", "terms": [{"loss": "hidden_mse", "weight": "beta"}]}, PREDICTION],
    },
    "pkd-skip": _pkd("skip"),
    "pkd-last": _pkd("last"),
    "ird": {
        "source": "Aguilar et al. 2020, KD from Internal Representations (AAAI), Sec. 3: attention KL + [CLS] cosine",
        "defaults": {"alpha": 0.5, "temperature": 4.0, "beta": 1.0},
        "knowledge": {"builder": "ird-rows"},
        "stages": [{"name": "internal", "epochs": "stage_epochs", "select_best": False, "schedule": "$ird_schedule",
                    "terms": [{"loss": "cosine", "weight": "beta"}, {"loss": "attention_kl", "weight": 1.0}]},
                   PREDICTION],
    },
    "minilm": {
        "source": "Wang et al. 2020, MiniLM (NeurIPS), Eq. 2-5: last-layer attention KL + value-relation KL",
        "defaults": {"alpha": 0.5, "temperature": 4.0, "beta": 1.0},
        "knowledge": {"logits": True, "relations": True},
        "stages": [{"name": "relations", "epochs": "hsk_epochs", "learning_rate": "hsk_learning_rate",
                    "select_best": False, "terms": [{"loss": "minilm_attention", "weight": 1.0},
                                                    {"loss": "minilm_value", "weight": "beta"}]}, PREDICTION],
    },
    "contrastive": {
        "source": "Tian et al. 2020, Contrastive Representation Distillation (ICLR), Eq. 10-19, "
                  "on [CLS] of the top layer, NCE over a memory bank",
        "defaults": {"alpha": 0.5, "temperature": 4.0, "beta": 0.8},
        "knowledge": {"logits": True, "hidden": True, "depth": "uniform", "layers": 1, "length": "cls"},
        "stages": [{"name": "contrastive", "terms": [*KD_TERMS, {"loss": "contrastive", "weight": "beta"}]}],
    },
}

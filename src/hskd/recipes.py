"""Methods as data: each recipe is a KnowledgeSpec plus weighted loss terms, in stages.

| recipe     | knowledge                    | loss                                                  |
|------------|------------------------------|-------------------------------------------------------|
| finetune   | none                         | CE (MSE for regression)                               |
| kd         | logits                       | (1-α)·CE + α·T²·KL                                    |
| tinybert   | all layers, tokens, dims     | + β·hidden MSE (uniform map, projection)              |
| mud        | compressed HSK (budget)      | stage 1: hidden MSE; stage 2: (1-α)·CE + α·T²·KL       |
| pkd-skip   | [CLS] on the skip map        | (1-α)·CE + α·T²·KL + β·MSE(normalised [CLS])          |
| pkd-last   | [CLS] on the last map        | as pkd-skip                                           |
| ird        | attentions + [CLS]           | KL(attention) + (1 − cos) per layer, scheduled; then KD|
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hskd import losses
from hskd.errors import HskdError
from hskd.knowledge import Knowledge, KnowledgeSpec, parse_budget

RECIPES = ("finetune", "kd", "tinybert", "mud", "pkd-skip", "pkd-last", "ird")
IRD_SCHEDULES = ("all", "progressive", "stacked")

# Published defaults; a value the user sets wins. PKD: the authors' code (T=10, α=0.7, β=100
# with the mean-reduced normalised MSE).
RECIPE_DEFAULTS = {
    "kd": {"alpha": 0.5, "temperature": 4.0},
    "tinybert": {"alpha": 0.5, "temperature": 4.0, "beta": 1.0},
    "mud": {"alpha": 1.0, "temperature": 1.0, "beta": 1.0, "knowledge": "1l_10t_0.1h"},
    "pkd-skip": {"alpha": 0.7, "temperature": 10.0, "beta": 100.0},
    "pkd-last": {"alpha": 0.7, "temperature": 10.0, "beta": 100.0},
    "ird": {"alpha": 0.5, "temperature": 4.0, "beta": 1.0},
}


@dataclass
class Objective:
    """Weighted loss terms of one stage.

    ``loss = ce·CE + kd·T²·KL + hidden·L_hidden + attention·KL_att``, with ``L_hidden`` one of
    ``mse`` (TinyBERT/MUD), ``pkd`` (normalised [CLS] MSE) or ``cosine`` (Aguilar et al.).
    ``active_pairs`` restricts hidden and attention terms to those layer-pair positions
    (IRD's progressive and stacked schedules); ``None`` means all.
    """

    ce: float = 1.0
    kd: float = 0.0
    temperature: float = 1.0
    hidden: float = 0.0
    hidden_loss: str = "mse"
    attention: float = 0.0
    active_pairs: list[int] | None = None

    @property
    def needs_hidden(self) -> bool:
        return self.hidden > 0

    @property
    def needs_attentions(self) -> bool:
        return self.attention > 0

    @property
    def needs_teacher(self) -> bool:
        return self.kd > 0 or self.hidden > 0 or self.attention > 0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, knowledge: Knowledge | None,
                 student_hidden: torch.Tensor | None, student_att: torch.Tensor | None,
                 key_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns the scalar loss (fp32) and its named parts (detached scalar tensors, for
        logging: turning them into floats here would stop the host every step)."""
        parts: dict[str, torch.Tensor] = {}
        if self.ce:
            parts["ce"] = self.ce * losses.task_loss(logits, labels)
        if self.kd:
            parts["kd"] = self.kd * losses.soft_label_loss(logits, knowledge.logits, self.temperature)
        pick = (lambda x: x) if self.active_pairs is None else (lambda x: x[:, self.active_pairs])
        if self.hidden:
            s, t = pick(student_hidden), pick(knowledge.hidden)
            if self.hidden_loss == "mse":
                term = losses.hidden_mse(s, t, pick(knowledge.token_mask))
            elif self.hidden_loss == "pkd":
                term = losses.pkd_loss(s[:, :, 0], t[:, :, 0])
            else:
                term = losses.cosine_loss(s[:, :, 0], t[:, :, 0])
            parts[f"hidden_{self.hidden_loss}"] = self.hidden * term
        if self.attention:
            keys = key_mask[:, : student_att.size(-1)]
            t_att = pick(knowledge.attentions)[..., : keys.size(1)]
            parts["attention_kl"] = self.attention * losses.attention_kl(
                pick(student_att), t_att, pick(knowledge.token_mask), keys)
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}


@dataclass
class Stage:
    """One training run within a recipe: its own epochs, learning rate and objective.
    ``select_best`` keeps the best checkpoint by the dev metric (stages that train the
    classifier); otherwise the last weights are kept."""

    name: str
    epochs: float
    learning_rate: float
    objective: Objective
    select_best: bool = True


def recipe_spec(recipe: str, s) -> KnowledgeSpec | None:
    """The knowledge a recipe needs, from settings ``s`` (a :class:`hskd.config.Settings`)."""
    if recipe == "finetune":
        return None
    if recipe == "kd":
        return KnowledgeSpec(logits=True)
    if recipe == "tinybert":
        return KnowledgeSpec(logits=True, hidden=True, depth="uniform", t_top=s.t_top)
    if recipe == "mud":
        return knowledge_spec(s)
    if recipe in ("pkd-skip", "pkd-last"):
        return KnowledgeSpec(logits=True, hidden=True, depth=recipe[4:], length="cls")
    if recipe == "ird":
        # attention rows: all tokens, or the first k (left) or [CLS] only; [CLS] stays first
        rows = s.length_strategy or "all"
        if rows not in ("all", "left", "cls"):
            raise HskdError("ird takes --length-strategy all, left or cls (attention rows)")
        tokens = parse_budget(str(s.knowledge)).tokens if rows == "left" and s.knowledge else None
        return KnowledgeSpec(logits=True, hidden=True, attentions=True, depth="uniform",
                             t_top=s.t_top, length=rows, tokens=tokens)
    raise HskdError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")


def knowledge_spec(s) -> KnowledgeSpec:
    """``--knowledge`` as a spec: a MUD budget string with the strategy flags, or a mapping
    (the YAML form). Soft labels are always included."""
    if isinstance(s.knowledge, dict):
        return KnowledgeSpec.from_dict({**s.knowledge, "logits": True})
    if not s.knowledge:
        raise HskdError("give --knowledge, e.g. 1l_10t_0.1h")
    return parse_budget(str(s.knowledge), depth=s.depth_strategy or "uniform", length=s.length_strategy,
                        width=s.width_strategy, t_top=s.t_top, seed=s.width_seed, logits=True)


def recipe_stages(recipe: str, s, n_pairs: int) -> list[Stage]:
    """The stages of a recipe. ``n_pairs`` is the number of layer pairs of its spec."""
    lr, epochs = s.learning_rate, s.num_train_epochs
    kd = Objective(ce=1 - s.alpha, kd=s.alpha, temperature=s.temperature) if recipe != "finetune" else None
    if recipe == "finetune":
        return [Stage("finetune", epochs, lr, Objective())]
    if recipe == "kd":
        return [Stage("kd", epochs, lr, kd)]
    if recipe == "tinybert":
        kd.hidden, kd.hidden_loss = s.beta, "mse"
        return [Stage("tinybert", epochs, lr, kd)]
    if recipe in ("pkd-skip", "pkd-last"):
        kd.hidden, kd.hidden_loss = s.beta, "pkd"
        return [Stage(recipe, epochs, lr, kd)]
    if recipe == "mud":
        hsk = Objective(ce=0.0, hidden=s.beta, hidden_loss="mse")
        return [Stage("hsk", s.hsk_epochs, s.hsk_learning_rate or lr, hsk, select_best=False),
                Stage("prediction", epochs, lr, kd)]
    if recipe == "ird":
        schedule = s.ird_schedule or "all"
        if schedule not in IRD_SCHEDULES:
            raise HskdError(f"unknown --ird-schedule {schedule!r}: use {', '.join(IRD_SCHEDULES)}")
        per_layer = s.stage_epochs

        def internal(active):
            return Objective(ce=0.0, hidden=s.beta, hidden_loss="cosine", attention=1.0, active_pairs=active)

        if schedule == "all":
            stages = [Stage("internal", per_layer, lr, internal(None), select_best=False)]
        elif schedule == "progressive":
            stages = [Stage(f"layer{i + 1}", per_layer, lr, internal([i]), select_best=False)
                      for i in range(n_pairs)]
        else:
            stages = [Stage(f"layers1-{i + 1}", per_layer, lr, internal(list(range(i + 1))),
                            select_best=False) for i in range(n_pairs)]
        return stages + [Stage("prediction", epochs, lr, kd)]
    raise HskdError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")

"""Loss terms: registered parts of an objective.

A term is an ``nn.Module`` registered by name (``@register_loss("hidden_mse")``). It declares
the knowledge it ``needs`` (``logits``, ``hidden``, ``attentions``, ``relations``), has its own
``weight`` and options, may own trainable parameters or buffers (a projection, a memory bank:
saved in every checkpoint and resumed with the student), may be limited to some layer-pair
positions (``pairs``), and sees the batch's example ids. An :class:`Objective` is the weighted
sum of a stage's terms. The formulas live in :mod:`hskd.losses`; a term picks its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hskd import losses
from hskd.errors import HskdError
from hskd.knowledge import zero_filled
from hskd.registry import Registry

LOSSES = Registry("loss term")
register_loss = LOSSES.register
KNOWLEDGE_KINDS = ("logits", "hidden", "attentions", "relations")


@dataclass
class TermContext:
    """What a term may need to build its parameters: widths, head counts, training rows."""

    student_hidden: int
    teacher_hidden: int | None = None
    student_heads: int | None = None
    teacher_heads: int | None = None
    n_examples: int = 0


@dataclass
class LossInputs:
    """Everything a term may read for one batch.

    Attributes:
        logits: student ``[batch, num_labels]``; labels ``[batch]``; example_ids ``[batch]``.
        knowledge: the teacher's :class:`hskd.knowledge.Knowledge` (``None`` when fine-tuning).
        student_hidden: ``[batch, pairs, tokens, width]`` student states at the teacher's
            layers, tokens and dims, projected to the teacher's width.
        student_attentions: ``[batch, pairs, heads, tokens, keys]`` attention rows.
        attention_mask: ``[batch, seq]``; student_outputs: the student's model output;
        student: the student model (for terms that recompute from its layers).
        student_hidden_full: ``[batch, pairs, tokens, teacher_hidden]``, all dimensions (only
            when a term has ``full_width``).
        layer_pairs: the plan's ``((student, teacher), ...)``.
        include_padding: the knowledge counts padding positions (``--hsk-padding include``),
            so attention terms count padded keys too.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    example_ids: torch.Tensor | None = None
    knowledge: Any = None
    student_hidden: torch.Tensor | None = None
    student_attentions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    student_outputs: Any = None
    student: nn.Module | None = None
    student_hidden_full: torch.Tensor | None = None
    layer_pairs: tuple | None = None
    include_padding: bool = False


class LossTerm(nn.Module):
    """Base class of a loss term. Subclasses set ``needs`` and implement :meth:`loss`.

    Args:
        context: a :class:`TermContext` (for terms that build parameters).
        weight: the term's weight in the objective.
        pairs: layer-pair positions the term is limited to (``None``: all).
        **options: the term's own options (e.g. ``temperature``).

    Raises:
        HskdError: an option the term does not take.
    """

    needs: frozenset = frozenset()
    options: dict = {}  # option name -> default
    choices: dict = {}  # option name -> its valid values, for options that are names

    def __init__(self, context: TermContext, weight: float = 1.0, pairs: list[int] | None = None, **options):
        super().__init__()
        unknown = set(options) - set(self.options)
        if unknown:
            raise HskdError(f"loss term {self.name!r} has no option(s) {sorted(unknown)}; "
                            f"it takes {sorted(self.options) or 'none'}")
        self.weight, self.pairs = float(weight), pairs
        self.opts = {**self.options, **options}
        for option, valid in self.choices.items():
            if self.opts[option] not in valid:
                raise HskdError(f"loss term {self.name!r}: {option} is one of {', '.join(map(str, valid))} "
                                f"(got {self.opts[option]!r})")

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def pick(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """``x [batch, pairs, ...]`` at this term's layer-pair positions."""
        return x if x is None or self.pairs is None else x[:, self.pairs]

    def loss(self, x: LossInputs) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: LossInputs) -> torch.Tensor:
        return self.weight * self.loss(x)


def loss_term(name: str):
    """``@loss_term("name")``: register a :class:`LossTerm` subclass under ``name``."""
    def wrap(cls):
        cls.registered_name = name
        return register_loss(name)(cls)
    return wrap


@loss_term("ce")
class CrossEntropy(LossTerm):
    """Cross-entropy on gold labels (MSE for regression): :func:`hskd.losses.task_loss`."""

    def loss(self, x):
        return losses.task_loss(x.logits, x.labels)


@loss_term("kd")
class SoftLabels(LossTerm):
    """Hinton et al. (2015): T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)); options ``temperature``,
    and ``form`` (kl, soft_ce), ``reduction`` (batchmean, mean), ``t_squared`` to restate other
    papers' code (:func:`hskd.losses.soft_label_loss`)."""

    needs = frozenset({"logits"})
    options = {"temperature": 1.0, "form": "kl", "reduction": "batchmean", "t_squared": True}
    choices = {"form": ("kl", "soft_ce"), "reduction": ("batchmean", "mean"), "t_squared": (True, False)}

    def loss(self, x):
        o = self.opts
        return losses.soft_label_loss(x.logits, x.knowledge.logits, o["temperature"], form=o["form"],
                                      reduction=o["reduction"], t_squared=bool(o["t_squared"]))


@loss_term("hidden_mse")
class HiddenMSE(LossTerm):
    """TinyBERT Eq. 7 / MUD Sec. 3: MSE over the selected hidden values, per pair, summed.

    Option ``width_loss``: ``selected`` (default) compares the kept dimensions only;
    ``zeroed`` compares whole vectors against the teacher's with its unkept dimensions set to
    0, as MUD's code does, which also pulls the student's other dimensions toward 0 (and
    divides by the whole width)."""

    needs = frozenset({"hidden"})
    options = {"width_loss": "selected"}
    choices = {"width_loss": ("selected", "zeroed")}

    @property
    def full_width(self) -> bool:
        return self.opts["width_loss"] == "zeroed"

    def loss(self, x):
        mask = self.pick(x.knowledge.token_mask)
        if not self.full_width:
            return losses.hidden_mse(self.pick(x.student_hidden), self.pick(x.knowledge.hidden), mask)
        student = self.pick(x.student_hidden_full)
        teacher = zero_filled(x.knowledge.hidden, x.knowledge.dim_index, student.size(-1))
        return losses.hidden_mse(student, self.pick(teacher), mask)


@loss_term("pkd")
class PatientKD(LossTerm):
    """Sun et al. (2019) Eq. 4: MSE of L2-normalised [CLS] states of the mapped layers; option
    ``normalize`` (false: the official code's default, un-normalised states)."""

    needs = frozenset({"hidden"})
    options = {"normalize": True}
    choices = {"normalize": (True, False)}

    def loss(self, x):
        return losses.pkd_loss(self.pick(x.student_hidden)[:, :, 0], self.pick(x.knowledge.hidden)[:, :, 0],
                               normalize=bool(self.opts["normalize"]))


@loss_term("cosine")
class CLSCosine(LossTerm):
    """Aguilar et al. (2020) Sec. 3.2: 1 − cos on [CLS] states of the mapped layers."""

    needs = frozenset({"hidden"})

    def loss(self, x):
        return losses.cosine_loss(self.pick(x.student_hidden)[:, :, 0], self.pick(x.knowledge.hidden)[:, :, 0])


@loss_term("attention_kl")
class AttentionKL(LossTerm):
    """Aguilar et al. (2020) Sec. 3.1: KL between attention distributions of mapped layers;
    option ``average`` (rows: pooled over the batch's rows; examples: per example first)."""

    needs = frozenset({"attentions"})
    options = {"average": "rows"}
    choices = {"average": ("rows", "examples")}

    def loss(self, x):
        keys = x.attention_mask[:, : x.student_attentions.size(-1)]
        t_att = self.pick(x.knowledge.attentions)[..., : keys.size(1)]
        return losses.attention_kl(self.pick(x.student_attentions), t_att, self.pick(x.knowledge.token_mask), keys,
                                   average=self.opts["average"])


@loss_term("attention_mse")
class AttentionScoreMSE(LossTerm):
    """TinyBERT Eq. 3: MSE of pre-softmax attention scores of the mapped layers (the recipe's
    knowledge sets ``attentions`` and ``attention_scores``); the embedding pair is skipped.

    Raises:
        HskdError: student and teacher head counts differ (TinyBERT compares head by head).
    """

    needs = frozenset({"attentions"})

    def __init__(self, context: TermContext, *args, **kwargs):
        super().__init__(context, *args, **kwargs)
        if context.student_heads and context.teacher_heads and context.student_heads != context.teacher_heads:
            raise HskdError(f"attention_mse compares heads one by one: the student has {context.student_heads}, "
                            f"the teacher {context.teacher_heads}; use a student with the teacher's head count")

    def loss(self, x):
        positions = [i for i, (s, _) in enumerate(x.layer_pairs or []) if s > 0]
        if self.pairs is not None:
            positions = [i for i in positions if i in self.pairs]
        keys = x.attention_mask[:, : x.student_attentions.size(-1)]
        if x.include_padding:  # TinyBERT's MSELoss over every row and key (padded keys are 0 on both sides)
            keys = torch.ones_like(keys)
        t_att = x.knowledge.attentions[:, positions][..., : keys.size(1)]
        return losses.attention_score_mse(x.student_attentions[:, positions], t_att,
                                          x.knowledge.token_mask[:, positions], keys)


class Objective:
    """The weighted terms of one stage: ``loss = Σ termᵢ`` (each term carries its weight).

    Not an ``nn.Module`` itself: the terms' parameters are registered once in the
    :class:`hskd.train.DistillationModel`, which runs the objective inside its forward.
    """

    def __init__(self, terms: list[LossTerm] | None = None):
        self.terms = list(terms or [])
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise HskdError(f"a stage lists a loss term twice ({names}); give each once")

    @classmethod
    def of(cls, context: TermContext | None = None, ce: float = 1.0, kd: float = 0.0, temperature: float = 1.0,
           hidden: float = 0.0, hidden_loss: str = "hidden_mse", attention: float = 0.0,
           pairs: list[int] | None = None) -> Objective:
        """The common terms by weight (a zero weight leaves the term out)."""
        context = context or TermContext(student_hidden=0)
        terms = []
        if ce:
            terms.append(LOSSES["ce"](context, ce))
        if kd:
            terms.append(LOSSES["kd"](context, kd, temperature=temperature))
        if hidden:
            terms.append(LOSSES[hidden_loss](context, hidden, pairs=pairs))
        if attention:
            terms.append(LOSSES["attention_kl"](context, attention, pairs=pairs))
        return cls(terms)

    @property
    def needs(self) -> frozenset:
        return frozenset().union(*(t.needs for t in self.terms))

    @property
    def full_width(self) -> bool:
        """A term compares whole hidden vectors (see :class:`HiddenMSE`)."""
        return any(getattr(t, "full_width", False) for t in self.terms)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.needs)

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss (fp32) and its named parts (detached scalar tensors, for logging:
        turning them into floats here would stop the host every step)."""
        parts = {t.name: t(x) for t in self.terms}
        total = sum(parts.values()) if parts else x.logits.sum() * 0.0
        return total, {k: v.detach() for k, v in parts.items()}

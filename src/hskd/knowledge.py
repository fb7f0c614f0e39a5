"""What the student learns from: ``KnowledgeSpec``, the selectors, and ``Knowledge``.

A spec is declarative and serialisable (YAML/JSON). ``extract`` runs on the teacher's outputs
and returns the selected values together with the indices it chose, per example, so they can
be cached; ``gather`` takes the student's tensors at the same layers, tokens and dimensions.
Online and cached training both go through ``gather``: only where ``Knowledge`` comes from
differs.

Compression follows Liu et al. (ACL 2021), "Marginal Utility Diminishes" (MUD), along
**depth** (which layers), **length** (which tokens) and **width** (which dimensions).

Conventions: ``hidden_states[0]`` is the embedding output and ``hidden_states[l]`` the output of
layer ``l``; a layer pair ``(s, t)`` maps student index ``s`` to teacher index ``t`` in that
numbering. The self-attention that produced ``hidden_states[l]`` is ``attentions[l - 1]``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

import torch

from hskd.errors import HskdError
from hskd.selectors import DEPTH, LENGTH, WIDTH, keeps_mask, select_dims, width_index, width_keep_mask  # noqa: F401 - re-exported


# ------------------------------------------------------------------------------------ spec
@dataclass
class KnowledgeSpec:
    """What the student learns from the teacher. Serialisable with :meth:`to_dict`.

    Attributes:
        logits: soft labels from the teacher's logits.
        hidden: hidden-state knowledge (HSK), selected by the fields below.
        attentions: attention distributions on the same layer map (rows = selected tokens).
        depth: ``uniform``, ``skip``, ``last`` or ``list`` (explicit ``layer_map``).
        layers: keep only the top-k student layers of the map (``None``: all).
        t_top: MUD's T_top for ``uniform`` (``None``: the teacher's depth).
        layer_map: ``[[student, teacher], ...]`` for ``depth: list``.
        length: ``all``, ``cls``, ``left``, ``attention`` or ``attention-no-sep``.
        tokens: k for ``left`` and the attention strategies.
        width: ``all``, ``uniform``, ``random`` or ``magnitude``; MUD's code's forms
            ``uniform-stride``, ``random-bernoulli`` and ``magnitude-batch`` (online only).
        width_fraction: kept fraction of the hidden size, in (0, 1].
        seed: seed of the ``random`` width selector.
        relations: MiniLM's self-attention relations of the teacher's last layer (attention
            distributions and value relations, all tokens; online only).
        rank_layer: attention length strategies rank tokens by the [CLS] attention of the
            ``mapped`` teacher layer (the one that produced the distilled state) or, with
            ``full-depth``, of the layer the uniform map with T_top = n_t gives (MUD's
            ``att_ttop12``, its default; the same layer unless ``t_top`` < n_t).
        rank_by: rank by attention ``probs`` (averaged over heads) or pre-softmax ``scores``
            (averaged over heads, as MUD's code does).
        attention_scores: the attention knowledge is TinyBERT's pre-softmax scores
            ``Q·Kᵀ/√d_head`` (masked keys 0) instead of probabilities, recomputed from each
            layer's input on both sides (no eager attention needed). The embedding pair (0) is
            kept for the hidden states; attention terms skip it.
        padding: ``exclude`` (default) leaves padding out of selection and losses;
            ``include`` is MUD's and TinyBERT's form: batches padded to the max length, the
            length selectors may choose padding positions, and the hidden and attention-score
            MSEs count every position (``MSELoss`` over the padded tensor).
    """

    logits: bool = True
    hidden: bool = False
    attentions: bool = False
    depth: str = "uniform"
    layers: int | None = None
    t_top: int | None = None
    layer_map: list | None = None
    length: str = "all"
    tokens: int | None = None
    width: str = "all"
    width_fraction: float = 1.0
    seed: int = 0
    relations: bool = False
    rank_layer: str = "mapped"
    rank_by: str = "probs"
    attention_scores: bool = False
    padding: str = "exclude"

    def __post_init__(self):
        if self.padding not in ("exclude", "include"):
            raise HskdError(f"padding is exclude or include (got {self.padding!r})")
        if self.attention_scores and not self.attentions:
            raise HskdError("attention_scores is a form of attention knowledge: set attentions too")
        if self.rank_layer not in ("mapped", "full-depth") or self.rank_by not in ("probs", "scores"):
            raise HskdError(f"rank_layer is mapped or full-depth and rank_by probs or scores "
                            f"(got {self.rank_layer!r}, {self.rank_by!r})")
        if self.depth not in DEPTH and self.depth != "list":
            raise HskdError(f"unknown depth strategy {self.depth!r}: use {', '.join([*DEPTH, 'list'])}")
        if self.depth == "list" and not self.layer_map:
            raise HskdError("depth 'list' needs layer_map: [[student, teacher], ...] in the YAML knowledge spec")
        if self.length not in LENGTH:
            raise HskdError(f"unknown length strategy {self.length!r}: use {', '.join(LENGTH)}")
        if self.width not in WIDTH:
            raise HskdError(f"unknown width strategy {self.width!r}: use {', '.join(WIDTH)}")
        if self.length in ("left", "attention", "attention-no-sep") and not self.tokens:
            raise HskdError(f"length strategy {self.length!r} needs a token count, e.g. --knowledge 10t")
        if not 0 < self.width_fraction <= 1:
            raise HskdError(f"width fraction {self.width_fraction} must be in (0, 1]")
        if self.layers is not None and self.layers < 1:
            raise HskdError("the number of layers must be at least 1")
        if self.width == "all" and self.width_fraction < 1:
            raise HskdError("a width fraction below 1 needs a width strategy: uniform, random or magnitude")
        if self.layer_map:
            try:
                pairs = [[int(x) for x in (p.split(":") if isinstance(p, str) else p)] for p in self.layer_map]
            except (TypeError, ValueError):
                pairs = []
            if not pairs or any(len(p) != 2 for p in pairs):
                raise HskdError(f"bad layer_map {self.layer_map!r}: give [[student, teacher], ...] or ['s:t', ...]")
            self.layer_map = pairs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> KnowledgeSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HskdError(f"unknown knowledge field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def layer_pairs(self, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
        """The (student, teacher) index pairs, ascending, after keeping the top ``layers``.

        Raises:
            HskdError: an index outside ``0..n_s`` / ``0..n_t``, or more layers than the map has.
        """
        if self.depth == "list":
            pairs = [tuple(p) for p in self.layer_map]
        else:
            pairs = DEPTH[self.depth](n_student, n_teacher, self.t_top)
        for s, t in pairs:
            if not (0 <= s <= n_student and 0 <= t <= n_teacher):
                raise HskdError(f"layer pair {s}:{t} is out of range for a {n_student}-layer student "
                                f"and a {n_teacher}-layer teacher")
        if self.attentions and self.depth != "list" and not (self.attention_scores and self.hidden):
            pairs = [p for p in pairs if p[0] > 0]  # the embedding output has no attention
        if self.layers is not None:
            if self.layers > len(pairs):
                raise HskdError(f"{self.layers} layers asked, but the {self.depth} map has {len(pairs)}")
            pairs = pairs[-self.layers:]
        if self.attentions and not (self.attention_scores and self.hidden) and any(s == 0 or t == 0 for s, t in pairs):
            raise HskdError("attention knowledge needs transformer layers: drop the embedding pair (0)")
        return pairs

    def resolve(self, n_student: int, n_teacher: int) -> Plan:
        """This spec against a student and a teacher: the :class:`Plan` everything downstream
        takes (layer pairs computed here, once).

        Raises:
            HskdError: as :meth:`layer_pairs`.
        """
        pairs = self.layer_pairs(n_student, n_teacher) if (self.hidden or self.attentions) else []
        return Plan(self, tuple(tuple(p) for p in pairs), n_student, n_teacher)

    def kept_width(self, hidden_size: int) -> int:
        """Number of kept dimensions: max(1, round(fraction · hidden_size)); MUD's selectors:
        int(fraction · hidden_size) (``uniform-stride``) and the Bernoulli draw's count
        (``random-bernoulli``)."""
        if self.width == "uniform-stride":
            return max(1, int(self.width_fraction * hidden_size))
        if keeps_mask(self.width):
            return hidden_size  # every dim is compared; the unkept entries of the target are 0
        if self.width == "random-bernoulli":
            from hskd.selectors import bernoulli_uniforms

            return max(1, int((bernoulli_uniforms(hidden_size, self.seed) > 1 - self.width_fraction).sum()))
        return max(1, round(self.width_fraction * hidden_size))

    def describe(self) -> str:
        """The MUD notation with strategies, e.g. ``1l_10t_0.1h (uniform/attention/uniform)``."""
        parts = [f"{self.layers}l" if self.layers else "all-l",
                 f"{self.tokens}t" if self.length not in ("all", "cls") else self.length,
                 f"{self.width_fraction:g}h"]
        return "_".join(parts) + f" ({self.depth}/{self.length}/{self.width})"


_BUDGET = re.compile(r"^(?:(\d+)l)?_?(?:(\d+)t)?_?(?:(\d*\.?\d+)h)?$")


def parse_budget(text: str, depth: str = "uniform", length: str | None = None,
                 width: str | None = None, **extra) -> KnowledgeSpec:
    """Parse MUD's compact notation (``1l_10t_0.1h``: 1 layer, 10 tokens, 10 % of width) into
    a hidden-state :class:`KnowledgeSpec`. Any part may be left out (all of that dimension).

    Strategies default to ``uniform`` depth, ``attention`` length when a token count is given,
    and ``uniform`` width when a fraction below 1 is given.

    Raises:
        HskdError: text that is not of that form.
    """
    m = _BUDGET.match(text.strip())
    if not m or not any(m.groups()):
        raise HskdError(f"bad knowledge budget {text!r}: write e.g. 1l_10t_0.1h (layers, tokens, width fraction)")
    layers, tokens, frac = m.groups()
    length = length or ("attention" if tokens else "all")
    width = width or ("uniform" if frac and float(frac) < 1 else "all")
    extra = {k: v for k, v in extra.items() if v is not None}  # unset rank options: the defaults
    return KnowledgeSpec(hidden=True, depth=depth, layers=int(layers) if layers else None,
                         length=length, tokens=int(tokens) if tokens else None,
                         width=width, width_fraction=float(frac) if frac else 1.0, **extra)


@dataclass(frozen=True)
class Plan:
    """A :class:`KnowledgeSpec` resolved once against a student of ``n_student`` layers and a
    teacher of ``n_teacher``: its ``pairs`` ``((student, teacher), ...)`` and its token and
    width budgets. Extraction, gathering, the cache and the loss terms all take the plan."""

    spec: KnowledgeSpec
    pairs: tuple
    n_student: int
    n_teacher: int

    def tokens(self, max_seq_length: int) -> int:
        """Token slots per layer pair: all positions, 1 for [CLS], else the spec's k."""
        return {"all": max_seq_length, "cls": 1}.get(self.spec.length, self.spec.tokens)

    def width(self, hidden_size: int) -> int:
        """Kept dimensions of a ``hidden_size``-wide teacher state."""
        return self.spec.kept_width(hidden_size)

    def logits_only(self) -> Plan:
        """The same teacher's soft labels alone (a prediction stage)."""
        return Plan(KnowledgeSpec(logits=True), (), self.n_student, self.n_teacher)

    @property
    def needs_states(self) -> bool:
        return self.spec.hidden or self.spec.attentions or self.spec.relations


# ------------------------------------------------------------------------------- knowledge
@dataclass
class Knowledge:
    """The teacher's selected knowledge for one batch, and the indices that select it.

    Attributes:
        logits: ``[batch, num_labels]``.
        hidden: ``[batch, pairs, tokens, width]`` teacher values (zero in unfilled slots).
        token_index: ``[batch, pairs, tokens]`` positions chosen, long.
        token_mask: ``[batch, pairs, tokens]`` true for real (non-padding) selections.
        dim_index: ``None`` (all dims), ``[width]`` shared, or ``[batch, pairs, tokens, width]``.
        attentions: ``[batch, pairs, heads, tokens, keys]`` attention rows of the selected tokens.
        relations: ``[batch, 2, heads, seq, seq]``: the last layer's attention distributions and
            value relations (MiniLM), all tokens.
    """

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    token_index: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    dim_index: torch.Tensor | None = None
    attentions: torch.Tensor | None = None
    relations: torch.Tensor | None = None


def _stack_layers(states, indices) -> torch.Tensor:
    return torch.stack([states[i] for i in indices], dim=1)


def _take_tokens(states: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """``[batch, pairs, seq, d]`` at ``[batch, pairs, k]`` -> ``[batch, pairs, k, d]``."""
    index = token_index.clamp(max=states.size(2) - 1)
    return states.gather(2, index[..., None].expand(-1, -1, -1, states.size(-1)))


def extract(plan: Plan, teacher_outputs, batch: dict, sep_token_id: int | None = None,
            teacher=None) -> Knowledge:
    """Select the teacher's knowledge for a batch, as ``plan`` says.

    Args:
        plan: from :meth:`KnowledgeSpec.resolve`.
        teacher_outputs: a model output with ``logits``, and ``hidden_states`` (a tuple of
            ``[batch, seq, hidden]``, embedding first) / ``attentions`` (``[batch, heads, seq,
            seq]`` probabilities) when the spec needs them.
        batch: with ``input_ids`` and ``attention_mask`` ``[batch, seq]``.
        teacher: the teacher model; for the attention length strategies its [CLS] attention
            rows are then computed from the hidden states (:func:`hskd.models.cls_attention`),
            so the teacher can run with fast (SDPA) attention that returns no attentions.
    """
    spec, pairs = plan.spec, list(plan.pairs)
    knowledge = Knowledge(logits=teacher_outputs.logits.detach() if spec.logits else None)
    if spec.relations:
        from hskd.models import attention_relations

        knowledge.relations = attention_relations(teacher, teacher_outputs.hidden_states, batch["attention_mask"],
                                                  teacher.config.num_attention_heads).detach()
    if not (spec.hidden or spec.attentions):
        return knowledge
    mask = batch["attention_mask"]
    att_layers = [max(t - 1, 0) for _, t in pairs]
    teacher_att = cls_rows = None
    if spec.attentions and spec.attention_scores:
        from hskd.models import attention_scores

        teacher_att = attention_scores(teacher, teacher_outputs.hidden_states, mask, att_layers)
    elif spec.attentions:
        teacher_att = _stack_layers(teacher_outputs.attentions, att_layers)  # [b, p, h, seq, seq]
    if spec.length.startswith("attention"):
        rank_layers = att_layers
        if spec.rank_layer == "full-depth":  # MUD's att_ttop12: the layer the T_top = n_t map gives
            rank_layers = [max(round(s * plan.n_teacher / plan.n_student) - 1, 0) for s, _ in pairs]
        if teacher is not None and teacher_outputs.hidden_states is not None:
            from hskd.models import cls_attention

            cls_rows = cls_attention(teacher, teacher_outputs.hidden_states, mask, rank_layers,
                                     scores=spec.rank_by == "scores")
        if cls_rows is None:
            if spec.rank_by == "scores":
                raise HskdError("ranking tokens by pre-softmax scores needs BERT-style self-attention in the teacher")
            rows = _stack_layers(teacher_outputs.attentions, rank_layers)
            cls_rows = rows.mean(2)[:, :, 0, :]
    extra = {"include_padding": True} if spec.padding == "include" else {}  # plugins need not know it
    index, token_mask = LENGTH[spec.length](
        attention_mask=mask, k=spec.tokens, pairs=len(pairs), cls_attention=cls_rows,
        input_ids=batch["input_ids"], sep_token_id=sep_token_id, **extra)
    knowledge.token_index, knowledge.token_mask = index, token_mask
    if spec.hidden:
        states = _take_tokens(_stack_layers(teacher_outputs.hidden_states, [t for _, t in pairs]), index)
        dim_index = width_index(spec, states)
        keep = width_keep_mask(spec, states, token_mask)
        values = select_dims(states, dim_index) * (token_mask[..., None] if keep is None else keep)
        knowledge.hidden, knowledge.dim_index = values.detach(), dim_index
    if spec.attentions:
        rows = index.clamp(max=mask.size(1) - 1)
        heads, keys = teacher_att.size(2), teacher_att.size(-1)
        gathered = teacher_att.gather(3, rows[:, :, None, :, None].expand(-1, -1, heads, -1, keys))
        knowledge.attentions = gathered.detach()
    return knowledge


def student_states_full(plan: Plan, student_outputs, knowledge: Knowledge, projection=None) -> torch.Tensor:
    """The student's states at the teacher's layers and tokens, projected to the teacher's
    whole width: ``[batch, pairs, tokens, teacher_hidden]``. For losses that compare whole
    vectors (MUD's width loss, ``hidden_mse`` with ``width_loss: zeroed``)."""
    states = _take_tokens(_stack_layers(student_outputs.hidden_states, [s for s, _ in plan.pairs]),
                          knowledge.token_index)
    return states if projection is None else projection(states)


def zero_filled(values: torch.Tensor, dim_index: torch.Tensor | None, width: int) -> torch.Tensor:
    """Selected values ``[..., w]`` put back at their dimensions of a ``[..., width]`` vector of
    zeros (MUD's teacher target for a width-compressed layer)."""
    if dim_index is None:
        return values
    full = values.new_zeros(*values.shape[:-1], width)
    if dim_index.dim() == 1:
        full[..., dim_index] = values
        return full
    return full.scatter(-1, dim_index, values)


def gather(plan: Plan, student_outputs, knowledge: Knowledge, projection=None, student=None,
           attention_mask: torch.Tensor | None = None,
           needs: frozenset | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The student's values at the teacher's layers, tokens and dimensions.

    ``student`` and ``attention_mask`` are needed for attention scores (recomputed from the
    student's layer inputs). ``needs`` (the objective's, e.g. ``{"attentions"}``) limits what
    is gathered: a term switched off by a zero weight (``--beta 0``) leaves its knowledge in the
    batch, but the student's forward did not compute the states it would take. The student's
    hidden states are projected to the teacher's width (TinyBERT's ``fit_dense``) and then taken
    at the same dimensions. Only the chosen output dimensions of the projection
    are computed when the width index is shared. Note: the MUD authors' code instead zeroes the
    teacher's unselected dimensions and compares full vectors, which also pulls the student
    towards zero there; here both sides are compared on the selected dimensions only.

    Returns:
        ``(hidden [batch, pairs, tokens, width] or None,
        attentions [batch, pairs, heads_s, tokens, keys] or None)``.
    """
    pairs = plan.pairs
    hidden = attentions = None
    if knowledge.hidden is not None and (needs is None or "hidden" in needs):
        states = _take_tokens(_stack_layers(student_outputs.hidden_states, [s for s, _ in pairs]),
                              knowledge.token_index)
        dim_index = knowledge.dim_index
        if projection is None:
            hidden = select_dims(states, dim_index)
        elif dim_index is not None and dim_index.dim() == 1:
            hidden = projection(states, out_index=dim_index)
        else:
            hidden = select_dims(projection(states), dim_index)
    if knowledge.attentions is not None and (needs is None or "attentions" in needs):
        layers = [max(s - 1, 0) for s, _ in pairs]  # the embedding slot (scores only) is skipped by the terms
        if plan.spec.attention_scores:
            from hskd.models import attention_scores

            att = attention_scores(student, student_outputs.hidden_states, attention_mask, layers)
        else:
            att = _stack_layers(student_outputs.attentions, layers)  # [b,p,h,seq,seq]
        rows = knowledge.token_index.clamp(max=att.size(3) - 1)
        heads, keys = att.size(2), att.size(-1)
        attentions = att.gather(3, rows[:, :, None, :, None].expand(-1, -1, heads, -1, keys))
    return hidden, attentions

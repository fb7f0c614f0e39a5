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
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch

from hskd.errors import HskdError

DEPTH: dict[str, Callable] = {}
LENGTH: dict[str, Callable] = {}
WIDTH: dict[str, Callable] = {}


def _register(registry: dict, name: str):
    def wrap(fn):
        registry[name] = fn
        return fn
    return wrap


# ----------------------------------------------------------------------------------- depth
@_register(DEPTH, "uniform")
def depth_uniform(n_student: int, n_teacher: int, t_top: int | None = None) -> list[tuple[int, int]]:
    """MUD Sec. 4.1 (after TinyBERT's uniform strategy): student index l = 0..n_s learns from
    teacher index g(l, T_top) = round(l · T_top / n_s), with Python's round (half to even), as
    in the authors' code. ``T_top`` (default n_t) is the highest teacher layer used, e.g. 12,
    10 or 8 for a 12-layer teacher. The embedding output maps to 0."""
    top = n_teacher if t_top is None else t_top
    if not 1 <= top <= n_teacher:
        raise HskdError(f"--t-top {top} must be between 1 and the teacher's {n_teacher} layers")
    return [(l, round(l * top / n_student)) for l in range(n_student + 1)]


@_register(DEPTH, "skip")
def depth_skip(n_student: int, n_teacher: int, t_top: int | None = None) -> list[tuple[int, int]]:
    """PKD-Skip (Sun et al., EMNLP 2019, Sec. 3.2): student layer j = 1..n_s−1 learns from
    teacher layer j · n_t / n_s. The student's top layer is covered by the logit loss."""
    return [(j, round(j * n_teacher / n_student)) for j in range(1, n_student)]


@_register(DEPTH, "last")
def depth_last(n_student: int, n_teacher: int, t_top: int | None = None) -> list[tuple[int, int]]:
    """PKD-Last (Sun et al., EMNLP 2019, Sec. 3.2): student layers 1..n_s−1 learn from the
    teacher's last n_s−1 layers before the top, n_t−n_s+1 .. n_t−1."""
    return [(j, n_teacher - n_student + j) for j in range(1, n_student)]


# ---------------------------------------------------------------------------------- length
def _positions(batch: int, pairs: int, k: int, device) -> torch.Tensor:
    return torch.arange(k, device=device).expand(batch, pairs, k)


@_register(LENGTH, "all")
def length_all(attention_mask, k, pairs, **_):
    """All real tokens (TinyBERT's full HSK): every position, masked where padding."""
    b, seq = attention_mask.shape
    index = _positions(b, pairs, seq, attention_mask.device)
    return index, attention_mask.bool()[:, None, :].expand(b, pairs, seq)


@_register(LENGTH, "cls")
def length_cls(attention_mask, k, pairs, **_):
    """The [CLS] token only (position 0), as in PKD and Aguilar et al."""
    b = attention_mask.size(0)
    index = torch.zeros(b, pairs, 1, dtype=torch.long, device=attention_mask.device)
    return index, torch.ones_like(index, dtype=torch.bool)


@_register(LENGTH, "left")
def length_left(attention_mask, k, pairs, **_):
    """MUD Sec. 4.2, "left": the first k tokens ([CLS] first); slots past an example's end are
    masked."""
    b = attention_mask.size(0)
    index = _positions(b, pairs, k, attention_mask.device)
    lengths = attention_mask.sum(-1)
    mask = index < lengths[:, None, None]
    return index.clamp(max=attention_mask.size(1) - 1), mask


def _attention_ranked(attention_mask, k, pairs, cls_attention, exclude=None):
    scores = cls_attention.float()  # [batch, pairs, seq]: head-averaged [CLS] row
    invalid = ~attention_mask.bool()
    if exclude is not None:
        invalid = invalid | exclude
    scores = scores.masked_fill(invalid[:, None, :], float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    seq = scores.size(-1)
    if k > seq:  # pad with unfilled slots
        pad = torch.zeros(*order.shape[:2], k - seq, dtype=order.dtype, device=order.device)
        order = torch.cat([order, pad], -1)
        ranked = torch.cat([scores.gather(-1, order[..., :seq]),
                            torch.full(pad.shape, float("-inf"), device=scores.device)], -1)
    else:
        order = order[..., :k]
        ranked = scores.gather(-1, order)
    return order, torch.isfinite(ranked)


@_register(LENGTH, "attention")
def length_attention(attention_mask, k, pairs, cls_attention=None, **_):
    """MUD Sec. 4.2, attention-based: per example and layer pair, the top-k tokens by the
    teacher's attention from the [CLS] query, averaged over heads (``cls_attention``
    ``[batch, pairs, seq]``). The attention used is that of the teacher layer that produced the
    distilled hidden state (the embedding slot uses layer 1's). Indices come in rank order, so a
    prefix is the top-k' for any k' < k. Padding is never chosen; ties go to the earlier
    position. (The authors rank pre-softmax scores averaged over heads; we average the
    probabilities, as Hugging Face returns them.)"""
    if cls_attention is None:
        raise HskdError("the attention length strategy needs the teacher's attentions")
    return _attention_ranked(attention_mask, k, pairs, cls_attention)


@_register(LENGTH, "attention-no-sep")
def length_attention_no_sep(attention_mask, k, pairs, cls_attention=None, input_ids=None,
                            sep_token_id=None, **_):
    """As ``attention``, with separator tokens excluded. The separator id comes from the
    tokenizer, and separators are found per example (one for single sentences, two for pairs),
    unlike the authors' code, which counts them in the batch's first example and hard-codes 102."""
    if cls_attention is None or sep_token_id is None:
        raise HskdError("attention-no-sep needs the teacher's attentions and the tokenizer's [SEP] id")
    return _attention_ranked(attention_mask, k, pairs, cls_attention, exclude=input_ids == sep_token_id)


# ----------------------------------------------------------------------------------- width
@_register(WIDTH, "all")
def width_all(values, w, seed):
    """All dimensions."""
    return None


@_register(WIDTH, "uniform")
def width_uniform(values, w, seed):
    """MUD Sec. 4.3, uniform: w evenly spaced dimensions, floor(i · d / w) for i < w; shared
    by all examples, tokens and layers."""
    d = values.size(-1)
    return (torch.arange(w, device=values.device) * d) // w


@_register(WIDTH, "random")
def width_random(values, w, seed):
    """MUD Sec. 4.3, random: w dimensions drawn without replacement with a seeded generator,
    shared by all examples, tokens and layers, and stored with the cache. Kept in draw order,
    so a prefix is the draw for any smaller width."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(values.size(-1), generator=gen)[:w].to(values.device)


@_register(WIDTH, "magnitude")
def width_magnitude(values, w, seed):
    """MUD Sec. 4.3, magnitude: the w entries of largest |h|, chosen per example, layer pair and
    token (so independent of batch composition), in rank order. The authors' code thresholds
    over the whole batch tensor instead, which makes the choice depend on the batch."""
    return values.abs().topk(w, dim=-1, sorted=True).indices


def select_dims(values: torch.Tensor, dim_index: torch.Tensor | None) -> torch.Tensor:
    """Take ``[..., d]`` at ``dim_index``: ``None`` (all), shared ``[w]`` or per-element
    ``[batch, pairs, tokens, w]``."""
    if dim_index is None:
        return values
    if dim_index.dim() == 1:
        return values[..., dim_index]
    return values.gather(-1, dim_index)


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
        width: ``all``, ``uniform``, ``random`` or ``magnitude``.
        width_fraction: kept fraction of the hidden size, in (0, 1].
        seed: seed of the ``random`` width selector.
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

    def __post_init__(self):
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
        if self.attentions and self.depth != "list":
            pairs = [p for p in pairs if p[0] > 0]  # the embedding output has no attention
        if self.layers is not None:
            if self.layers > len(pairs):
                raise HskdError(f"{self.layers} layers asked, but the {self.depth} map has {len(pairs)}")
            pairs = pairs[-self.layers:]
        if self.attentions and any(s == 0 or t == 0 for s, t in pairs):
            raise HskdError("attention knowledge needs transformer layers: drop the embedding pair (0)")
        return pairs

    def kept_width(self, hidden_size: int) -> int:
        """Number of kept dimensions: max(1, round(fraction · hidden_size))."""
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
    return KnowledgeSpec(hidden=True, depth=depth, layers=int(layers) if layers else None,
                         length=length, tokens=int(tokens) if tokens else None,
                         width=width, width_fraction=float(frac) if frac else 1.0, **extra)


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
    """

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    token_index: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    dim_index: torch.Tensor | None = None
    attentions: torch.Tensor | None = None


def _stack_layers(states, indices) -> torch.Tensor:
    return torch.stack([states[i] for i in indices], dim=1)


def _take_tokens(states: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """``[batch, pairs, seq, d]`` at ``[batch, pairs, k]`` -> ``[batch, pairs, k, d]``."""
    index = token_index.clamp(max=states.size(2) - 1)
    return states.gather(2, index[..., None].expand(-1, -1, -1, states.size(-1)))


def extract(spec: KnowledgeSpec, pairs: list[tuple[int, int]], teacher_outputs, batch: dict,
            sep_token_id: int | None = None, teacher=None) -> Knowledge:
    """Select the teacher's knowledge for a batch.

    Args:
        pairs: from :meth:`KnowledgeSpec.layer_pairs`.
        teacher_outputs: a model output with ``logits``, and ``hidden_states`` (a tuple of
            ``[batch, seq, hidden]``, embedding first) / ``attentions`` (``[batch, heads, seq,
            seq]`` probabilities) when the spec needs them.
        batch: with ``input_ids`` and ``attention_mask`` ``[batch, seq]``.
        teacher: the teacher model; for the attention length strategies its [CLS] attention
            rows are then computed from the hidden states (:func:`hskd.models.cls_attention`),
            so the teacher can run with fast (SDPA) attention that returns no attentions.
    """
    knowledge = Knowledge(logits=teacher_outputs.logits.detach() if spec.logits else None)
    if not (spec.hidden or spec.attentions):
        return knowledge
    mask = batch["attention_mask"]
    att_layers = [max(t - 1, 0) for _, t in pairs]
    teacher_att = cls_rows = None
    if spec.attentions:
        teacher_att = _stack_layers(teacher_outputs.attentions, att_layers)  # [b, p, h, seq, seq]
    if spec.length.startswith("attention"):
        if teacher is not None and teacher_outputs.hidden_states is not None:
            from hskd.models import cls_attention

            cls_rows = cls_attention(teacher, teacher_outputs.hidden_states, mask, att_layers)
        if cls_rows is None:
            if teacher_att is None:
                teacher_att = _stack_layers(teacher_outputs.attentions, att_layers)
            cls_rows = teacher_att.mean(2)[:, :, 0, :]
    index, token_mask = LENGTH[spec.length](
        attention_mask=mask, k=spec.tokens, pairs=len(pairs), cls_attention=cls_rows,
        input_ids=batch["input_ids"], sep_token_id=sep_token_id)
    knowledge.token_index, knowledge.token_mask = index, token_mask
    if spec.hidden:
        states = _take_tokens(_stack_layers(teacher_outputs.hidden_states, [t for _, t in pairs]), index)
        dim_index = WIDTH[spec.width](states, spec.kept_width(states.size(-1)), spec.seed)
        values = select_dims(states, dim_index) * token_mask[..., None]
        knowledge.hidden, knowledge.dim_index = values.detach(), dim_index
    if spec.attentions:
        rows = index.clamp(max=mask.size(1) - 1)
        heads, keys = teacher_att.size(2), teacher_att.size(-1)
        gathered = teacher_att.gather(3, rows[:, :, None, :, None].expand(-1, -1, heads, -1, keys))
        knowledge.attentions = gathered.detach()
    return knowledge


def gather(pairs: list[tuple[int, int]], student_outputs, knowledge: Knowledge,
           projection=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The student's values at the teacher's layers, tokens and dimensions.

    The student's hidden states are projected to the teacher's width (TinyBERT's ``fit_dense``)
    and then taken at the same dimensions. Only the chosen output dimensions of the projection
    are computed when the width index is shared. Note: the MUD authors' code instead zeroes the
    teacher's unselected dimensions and compares full vectors, which also pulls the student
    towards zero there; here both sides are compared on the selected dimensions only.

    Returns:
        ``(hidden [batch, pairs, tokens, width] or None,
        attentions [batch, pairs, heads_s, tokens, keys] or None)``.
    """
    hidden = attentions = None
    if knowledge.hidden is not None:
        states = _take_tokens(_stack_layers(student_outputs.hidden_states, [s for s, _ in pairs]),
                              knowledge.token_index)
        dim_index = knowledge.dim_index
        if projection is None:
            hidden = select_dims(states, dim_index)
        elif dim_index is not None and dim_index.dim() == 1:
            hidden = projection(states, out_index=dim_index)
        else:
            hidden = select_dims(projection(states), dim_index)
    if knowledge.attentions is not None:
        att = _stack_layers(student_outputs.attentions, [s - 1 for s, _ in pairs])  # [b,p,h,seq,seq]
        rows = knowledge.token_index.clamp(max=att.size(3) - 1)
        heads, keys = att.size(2), att.size(-1)
        attentions = att.gather(3, rows[:, :, None, :, None].expand(-1, -1, heads, -1, keys))
    return hidden, attentions

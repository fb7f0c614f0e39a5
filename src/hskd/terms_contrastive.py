"""A loss term with trainable parameters: contrastive representation distillation on [CLS]
(Tian et al., ICLR 2020, "Contrastive Representation Distillation", Eq. 10-19).

The student's and the teacher's [CLS] states of the top mapped layer are embedded by two
learned linear heads into ``dim`` dimensions and L2-normalised. For each example, its
teacher embedding is the positive and ``negatives`` embeddings drawn at random from a memory
bank of teacher embeddings of the other training rows are the negatives; the loss is the NCE
softmax cross-entropy with temperature ``tau`` (CRD's "NCE-softmax" form). The bank is indexed
by example id and updated with momentum after each batch (no gradients). Heads and bank are
saved in every checkpoint and resumed with the student.

Departures from the paper: softmax over sampled negatives rather than its binary NCE with a
noise-contrastive constant; negatives may (rarely) include the example itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hskd.terms import LossTerm, TermContext, loss_term


@loss_term("contrastive")
class Contrastive(LossTerm):
    """NCE-softmax between projected student and teacher [CLS] states over a memory bank.

    Options: ``dim`` (128), ``negatives`` (4096), ``tau`` (0.07), ``momentum`` (0.5).
    Needs ``hidden`` knowledge with the [CLS] token first (``length: cls``); uses the last pair.
    """

    needs = frozenset({"hidden"})
    options = {"dim": 128, "negatives": 4096, "tau": 0.07, "momentum": 0.5}

    def __init__(self, context: TermContext, weight: float = 1.0, pairs=None, **options):
        super().__init__(context, weight, pairs, **options)
        dim, teacher = int(self.opts["dim"]), context.teacher_hidden or context.student_hidden
        # the student side arrives projected to the teacher's width (the shared fit_dense)
        self.student_head = nn.Linear(teacher, dim)
        self.teacher_head = nn.Linear(teacher, dim)
        bank = F.normalize(torch.randn(max(context.n_examples, 1), dim), dim=-1)
        self.register_buffer("bank", bank)

    def loss(self, x):
        s = F.normalize(self.student_head(self.pick(x.student_hidden)[:, -1, 0].float()), dim=-1)  # [b, dim]
        t = F.normalize(self.teacher_head(self.pick(x.knowledge.hidden)[:, -1, 0].float()), dim=-1)
        ids = x.example_ids.long()
        k = min(int(self.opts["negatives"]), self.bank.size(0))
        negatives = self.bank[torch.randint(self.bank.size(0), (s.size(0), k), device=s.device)]  # [b, k, dim]
        positive = (s * t).sum(-1, keepdim=True)  # [b, 1]
        scores = torch.cat([positive, torch.einsum("bd,bkd->bk", s, negatives)], 1) / self.opts["tau"]
        target = torch.zeros(s.size(0), dtype=torch.long, device=s.device)
        loss = F.cross_entropy(scores, target)
        if self.training:
            with torch.no_grad():
                m = self.opts["momentum"]
                self.bank[ids] = F.normalize(m * self.bank[ids] + (1 - m) * t.detach(), dim=-1)
        return loss

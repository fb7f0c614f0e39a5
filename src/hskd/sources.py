"""Where the teacher's knowledge comes from: one interface, two sources.

A knowledge source has ``for_objective(objective)`` (the same source narrowed to what a stage's
terms need), ``collator(base)`` (what the training DataLoader collates with) and
``__call__(inputs, batch_knowledge) -> Knowledge`` (in the training step, on the device).

- :class:`OnlineTeacher` runs the teacher in the step;
- :class:`CachedKnowledge` reads cache rows in the DataLoader (:class:`CacheCollator`) and
  the step only wraps the tensors that arrived.

Either way the loss sees the same :class:`hskd.knowledge.Knowledge`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from hskd.knowledge import Knowledge, Plan, extract
from hskd.models import model_inputs, needs_eager_attention
from hskd.storage import decode_batch
from hskd.terms import Objective


class OnlineTeacher:
    """Knowledge from a teacher forward pass on each batch: eval mode (dropout off), gradients
    off, on the training device in the run's precision.

    Args:
        device, dtype: where and in what dtype the teacher runs (``None``: where it is).
        teacher_data, teacher_collator: for a teacher that tokenizes differently from the
            student (soft labels only): the training set tokenized with the teacher's own
            tokenizer, by ``example_id``, and its collator; each batch then carries the
            teacher's inputs, collated in the DataLoader.
    """

    def __init__(self, teacher: nn.Module, plan: Plan, sep_token_id: int | None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None,
                 teacher_data=None, teacher_collator=None):
        self.teacher, self.plan, self.sep = teacher.eval(), plan, sep_token_id
        self.teacher_data, self.teacher_collator = teacher_data, teacher_collator
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if device is not None or dtype is not None:
            self.teacher.to(device=device, dtype=dtype)
        self.needs_attentions = needs_eager_attention(plan.spec, teacher.config)

    def for_objective(self, objective: Objective) -> OnlineTeacher:
        """The same teacher serving soft labels alone when the objective needs no more (e.g. a
        prediction stage): no hidden states asked or selected."""
        if objective.needs - {"logits"}:
            return self
        return OnlineTeacher(self.teacher, self.plan.logits_only(), self.sep, teacher_data=self.teacher_data,
                             teacher_collator=self.teacher_collator)

    def collator(self, base):
        """Training batches need nothing more (the knowledge is made in the step), except the
        teacher's own inputs when it tokenizes differently."""
        if self.teacher_data is None:
            return base
        return TeacherInputsCollator(base, self.teacher_data, self.teacher_collator)

    @torch.no_grad()
    def __call__(self, inputs: dict, batch_knowledge: dict | None = None) -> Knowledge:
        device = inputs["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()  # dropout off, whatever the trainer did to other modules
        spec = self.plan.spec
        if batch_knowledge and "teacher_inputs" in batch_knowledge:  # its own tokenization (soft labels)
            inputs = batch_knowledge["teacher_inputs"]
        out = self.teacher(**model_inputs(inputs, self.teacher),
                           output_hidden_states=spec.hidden or spec.relations or spec.attention_scores,
                           output_attentions=self.needs_attentions)
        return extract(self.plan, out, inputs, self.sep, teacher=self.teacher)


class TeacherInputsCollator:
    """Collates a training batch and adds the teacher's inputs for the same examples, from its
    own tokenization: ``batch["knowledge"] = {"teacher_inputs": {input_ids, attention_mask,
    token_type_ids}}`` (padded for the teacher)."""

    def __init__(self, base, teacher_data, teacher_collator):
        self.base, self.data, self.collate = base, teacher_data, teacher_collator

    def __call__(self, features: list[dict]) -> dict:
        batch = self.base(features)
        rows = self.collate([self.data[int(f["example_id"])] for f in features])
        batch["knowledge"] = {"teacher_inputs": {k: rows[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                                                 if k in rows}}
        return batch


class CacheCollator:
    """Collates a training batch and reads its rows of the knowledge cache, so that the read
    happens in the DataLoader (in its workers when ``dataloader_num_workers > 0``, into pinned
    memory on CUDA) and overlaps the previous step, never inside the training step.

    The batch gains ``knowledge`` (a dict of :class:`Knowledge` fields, CPU tensors in their
    storage form: hidden ``[batch, pairs, tokens, width]`` fp16, int8 or fp8 bits, with
    ``hidden_storage`` and ``hidden_scale``; indices int64) and ``cache_read_seconds`` (a float,
    the read's wall time). The trainer decodes the hidden values once the batch is on the
    device (:func:`hskd.storage.decode_batch`).
    """

    def __init__(self, base, reader, plan: Plan):
        self.base, self.reader, self.plan = base, reader, plan

    def __call__(self, features: list[dict]) -> dict:
        batch = self.base(features)
        start = time.perf_counter()
        batch["knowledge"] = self.reader.read_stored(batch["example_id"].numpy(), self.plan,
                                                     seq_len=batch["input_ids"].size(1))
        batch["cache_read_seconds"] = time.perf_counter() - start
        return batch


class CachedKnowledge:
    """Knowledge read back from a :class:`hskd.cache.KnowledgeCache` by example id, in the data
    pipeline (:class:`CacheCollator`). The teacher is never loaded."""

    def __init__(self, reader, plan: Plan):
        self.reader, self.plan = reader, plan

    def for_objective(self, objective: Objective) -> CachedKnowledge:
        """The same cache serving soft labels alone (hidden arrays not read) when the objective
        needs no more."""
        if objective.needs - {"logits"}:
            return self
        return CachedKnowledge(self.reader, self.plan.logits_only())

    def collator(self, base) -> CacheCollator:
        return CacheCollator(base, self.reader, self.plan)

    def __call__(self, inputs: dict, batch_knowledge: dict) -> Knowledge:
        """The batch's knowledge, read by :class:`CacheCollator`, already on the device and
        decoded (:meth:`hskd.train.DistillationTrainer._prepare_inputs`)."""
        return Knowledge(**decode_batch(batch_knowledge))  # a no-op once the trainer decoded it

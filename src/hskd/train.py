"""Training: a ``transformers.Trainer`` subclass whose ``compute_loss`` adds distillation.

The Trainer gives shuffling, dynamic padding and grouping by length, warmup and linear decay,
gradient clipping, evaluation and best-checkpoint selection each epoch, seeds, TensorBoard,
checkpoint/resume (optimizer, scheduler and RNG state) and DDP under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hskd.data import MODEL_INPUTS
from hskd.knowledge import Knowledge, KnowledgeSpec, extract, gather
from hskd.losses import task_loss
from hskd.models import Projection, needs_eager_attention
from hskd.recipes import Objective, Stage
from hskd.tasks import TaskSpec, compute_metrics


class DistillationModel(nn.Module):
    """The student plus what is trained with it (the projection to the teacher's width).

    Both are saved in every checkpoint and restored on resume. ``forward`` returns the student's
    output and, given ``knowledge``, the student's values gathered at the teacher's indices, so
    that everything trained runs inside the (possibly DDP-wrapped) forward.
    """

    def __init__(self, student: nn.Module, teacher_hidden: int | None = None):
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        self.projection = Projection(width, teacher_hidden) if teacher_hidden else None

    def forward(self, knowledge: Knowledge | None = None, pairs=None, output_hidden_states=False,
                output_attentions=False, **inputs):
        out = self.student(**inputs, output_hidden_states=output_hidden_states,
                           output_attentions=output_attentions)
        if knowledge is None:
            return out, None, None
        hidden, att = gather(pairs, out, knowledge, self.projection)
        return out, hidden, att


class OnlineTeacher:
    """Knowledge from a teacher forward pass (eval mode, no grad) on each batch."""

    def __init__(self, teacher: nn.Module, spec: KnowledgeSpec, pairs, sep_token_id: int | None):
        self.teacher, self.spec, self.pairs, self.sep = teacher.eval(), spec, pairs, sep_token_id
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.needs_attentions = needs_eager_attention(spec, teacher.config)

    def logits_only(self) -> OnlineTeacher:
        """The same teacher serving soft labels alone (no hidden states asked or selected)."""
        return OnlineTeacher(self.teacher, KnowledgeSpec(logits=True), [], self.sep)

    @torch.no_grad()
    def __call__(self, inputs: dict, example_ids: torch.Tensor) -> Knowledge:
        device = inputs["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()  # dropout off, whatever the trainer did to other modules
        out = self.teacher(**inputs, output_hidden_states=self.spec.hidden,
                           output_attentions=self.needs_attentions)
        return extract(self.spec, self.pairs, out, inputs, self.sep, teacher=self.teacher)


class CachedKnowledge:
    """Knowledge read back from a :class:`hskd.cache.KnowledgeCache` by example id. The
    teacher is never loaded."""

    def __init__(self, reader, spec: KnowledgeSpec, pairs):
        self.reader, self.spec, self.pairs = reader, spec, pairs
        self.read_seconds = 0.0

    def logits_only(self) -> CachedKnowledge:
        """The same cache serving soft labels alone (hidden arrays not read)."""
        return CachedKnowledge(self.reader, KnowledgeSpec(logits=True), [])

    def __call__(self, inputs: dict, example_ids: torch.Tensor) -> Knowledge:
        start = time.perf_counter()
        k = self.reader.read(example_ids.cpu().numpy(), self.spec, self.pairs,
                             seq_len=inputs["input_ids"].size(1), device=inputs["input_ids"].device)
        self.read_seconds += time.perf_counter() - start
        return k


class DistillationTrainer(Trainer):
    """``Trainer`` with ``compute_loss`` = the stage's :class:`Objective` over the student's
    outputs and the teacher's :class:`Knowledge` (online or cached). In evaluation only the
    task loss is computed, and the teacher is not consulted."""

    def __init__(self, *args, objective: Objective, knowledge_source=None, pairs=None, **kwargs):
        super().__init__(*args, **kwargs)
        if knowledge_source is not None and not (objective.needs_hidden or objective.needs_attentions):
            knowledge_source = knowledge_source.logits_only()  # e.g. a prediction stage: soft labels only
        self.objective, self.knowledge_source, self.pairs = objective, knowledge_source, pairs
        self._parts: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, example_ids = inputs["labels"], inputs["example_id"]
        model_inputs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
        distilling = model.training and self.objective.needs_teacher
        if not distilling:  # fine-tuning, or evaluation: the task loss alone
            out, _, _ = model(**model_inputs)
            loss = task_loss(out.logits, labels)
            return (loss, {"logits": out.logits}) if return_outputs else loss
        knowledge = self.knowledge_source(model_inputs, example_ids)
        out, s_hidden, s_att = model(
            knowledge=knowledge if (self.objective.needs_hidden or self.objective.needs_attentions) else None,
            pairs=self.pairs, output_hidden_states=self.objective.needs_hidden,
            output_attentions=self.objective.needs_attentions, **model_inputs)
        loss, parts = self.objective(out.logits, labels, knowledge, s_hidden, s_att,
                                     model_inputs["attention_mask"])
        for name, value in parts.items():
            self._parts.setdefault(name, []).append(value)
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._parts:  # the loss terms, averaged since the last log
            logs.update({f"loss_{k}": sum(v) / len(v) for k, v in self._parts.items()})
            self._parts = {}
        super().log(logs, *args, **kwargs)


def training_arguments(stage_dir: Path, stage: Stage, task: TaskSpec, s, select: bool,
                       has_dev: bool) -> TrainingArguments:
    """The Trainer settings of one stage, from :class:`hskd.config.Settings` ``s``."""
    kwargs = dict(
        output_dir=str(stage_dir),
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.eval_batch_size,
        num_train_epochs=stage.epochs,
        max_steps=s.max_steps if s.max_steps else -1,
        learning_rate=stage.learning_rate,
        warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        train_sampling_strategy="group_by_length",
        # with --save-steps, evaluate at the same steps: best-checkpoint selection needs both
        eval_strategy=("steps" if s.save_steps else "epoch") if has_dev else "no",
        eval_steps=s.save_steps,
        save_strategy="steps" if s.save_steps else "epoch",
        save_steps=s.save_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=select,
        metric_for_best_model=task.main_metric if select else None,
        greater_is_better=True,
        logging_steps=s.logging_steps,
        report_to=["tensorboard"],
        seed=s.seed,
        data_seed=s.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_drop_last=False,
        disable_tqdm=s.quiet,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        kwargs["ddp_backend"] = "gloo"
    return TrainingArguments(**kwargs)


def metrics_fn(task: TaskSpec):
    def compute(pred):
        return compute_metrics(task, pred.predictions, pred.label_ids)
    return compute


def run_stage(stage_dir: Path, stage: Stage, model: DistillationModel, task: TaskSpec, s, train_ds,
              dev_ds, collator, knowledge_source, pairs, resume: bool) -> dict:
    """Train one stage; resume from its last checkpoint when asked and one exists.

    Returns the Trainer's train metrics plus ``train_seconds`` and ``train_examples_per_second``.
    """
    args = training_arguments(stage_dir, stage, task, s, stage.select_best and dev_ds is not None, dev_ds is not None)
    trainer = DistillationTrainer(
        model=model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=dev_ds,
        compute_metrics=metrics_fn(task), objective=stage.objective,
        knowledge_source=knowledge_source, pairs=pairs, callbacks=s.callbacks or None)
    has_checkpoint = resume and any(p.name.startswith("checkpoint-") for p in stage_dir.glob("checkpoint-*"))
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
    seconds = time.perf_counter() - start
    metrics = dict(result.metrics)
    metrics["train_seconds"] = seconds
    metrics["global_step"] = trainer.state.global_step
    metrics["max_steps"] = trainer.state.max_steps
    if isinstance(trainer.knowledge_source, CachedKnowledge):
        metrics["cache_read_seconds"] = trainer.knowledge_source.read_seconds
    best = trainer.state.best_metric
    if best is not None:
        metrics["best_dev_metric"] = best
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = stage_dir / "stage.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, stage_dir / "stage.json")
    return metrics

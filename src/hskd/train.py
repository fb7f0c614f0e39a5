"""Training: a ``transformers.Trainer`` subclass whose ``compute_loss`` adds distillation.

The Trainer gives shuffling, dynamic padding and grouping by length, warmup and linear decay,
gradient clipping, evaluation and best-checkpoint selection each epoch, seeds, TensorBoard,
checkpoint/resume (optimizer, scheduler and RNG state) and DDP under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hskd.data import MODEL_INPUTS
from hskd.device import resolve_device
from hskd.knowledge import Knowledge, KnowledgeSpec, extract, gather
from hskd.losses import task_loss
from hskd.models import Projection, model_inputs, needs_eager_attention
from hskd.recipes import Objective, Stage
from hskd.tasks import TaskSpec, compute_metrics


class DistillationModel(nn.Module):
    """The student plus what is trained with it (the projection to the teacher's width).

    Both are saved in every checkpoint and restored on resume. ``forward`` returns the student's
    output and, given ``knowledge``, the student's values gathered at the teacher's indices, so
    that everything trained runs inside the (possibly DDP-wrapped) forward.
    """

    # The objective is a batch mean, not a sum over ``num_items_in_batch``: this tells the Trainer
    # to divide it by the gradient-accumulation steps (``**inputs`` would make it guess otherwise,
    # and accumulation would then multiply the learning rate).
    accepts_loss_kwargs = False

    def __init__(self, student: nn.Module, teacher_hidden: int | None = None):
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        self.projection = Projection(width, teacher_hidden) if teacher_hidden else None

    def forward(self, knowledge: Knowledge | None = None, pairs=None, output_hidden_states=False,
                output_attentions=False, **inputs):
        out = self.student(**model_inputs(inputs, self.student.dtype), output_hidden_states=output_hidden_states,
                           output_attentions=output_attentions)
        if knowledge is None:
            return out, None, None
        hidden, att = gather(pairs, out, knowledge, self.projection)
        return out, hidden, att


class OnlineTeacher:
    """Knowledge from a teacher forward pass on each batch: eval mode (dropout off), gradients
    off, on the training device in the run's precision.

    Args:
        device, dtype: where and in what dtype the teacher runs (``None``: where it is).
    """

    def __init__(self, teacher: nn.Module, spec: KnowledgeSpec, pairs, sep_token_id: int | None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        self.teacher, self.spec, self.pairs, self.sep = teacher.eval(), spec, pairs, sep_token_id
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if device is not None or dtype is not None:
            self.teacher.to(device=device, dtype=dtype)
        self.needs_attentions = needs_eager_attention(spec, teacher.config)

    def for_objective(self, objective: Objective) -> OnlineTeacher:
        """The same teacher serving soft labels alone when the objective needs no more (e.g. a
        prediction stage): no hidden states asked or selected."""
        if objective.needs_hidden or objective.needs_attentions:
            return self
        return OnlineTeacher(self.teacher, KnowledgeSpec(logits=True), [], self.sep)

    def collator(self, base):
        """Training batches need nothing more: the knowledge is made in the step."""
        return base

    @torch.no_grad()
    def __call__(self, inputs: dict, batch_knowledge: dict | None = None) -> Knowledge:
        device = inputs["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()  # dropout off, whatever the trainer did to other modules
        out = self.teacher(**model_inputs(inputs, self.teacher.dtype), output_hidden_states=self.spec.hidden,
                           output_attentions=self.needs_attentions)
        return extract(self.spec, self.pairs, out, inputs, self.sep, teacher=self.teacher)


class CacheCollator:
    """Collates a training batch and reads its rows of the knowledge cache, so that the read
    happens in the DataLoader (in its workers when ``dataloader_num_workers > 0``, into pinned
    memory on CUDA) and overlaps the previous step, never inside the training step.

    The batch gains ``knowledge`` (a dict of :class:`Knowledge` fields, CPU tensors in their
    storage dtypes: hidden ``[batch, pairs, tokens, width]`` fp16, indices int64) and
    ``cache_read_seconds`` (a float, the read's wall time).
    """

    def __init__(self, base, reader, spec: KnowledgeSpec, pairs):
        self.base, self.reader, self.spec, self.pairs = base, reader, spec, pairs

    def __call__(self, features: list[dict]) -> dict:
        batch = self.base(features)
        start = time.perf_counter()
        k = self.reader.read(batch["example_id"].numpy(), self.spec, self.pairs, seq_len=batch["input_ids"].size(1))
        batch["knowledge"] = {f.name: getattr(k, f.name) for f in fields(k) if getattr(k, f.name) is not None}
        batch["cache_read_seconds"] = time.perf_counter() - start
        return batch


class CachedKnowledge:
    """Knowledge read back from a :class:`hskd.cache.KnowledgeCache` by example id, in the data
    pipeline (:class:`CacheCollator`). The teacher is never loaded."""

    def __init__(self, reader, spec: KnowledgeSpec, pairs):
        self.reader, self.spec, self.pairs = reader, spec, pairs

    def for_objective(self, objective: Objective) -> CachedKnowledge:
        """The same cache serving soft labels alone (hidden arrays not read) when the objective
        needs no more."""
        if objective.needs_hidden or objective.needs_attentions:
            return self
        return CachedKnowledge(self.reader, KnowledgeSpec(logits=True), [])

    def collator(self, base) -> CacheCollator:
        return CacheCollator(base, self.reader, self.spec, self.pairs)

    def __call__(self, inputs: dict, batch_knowledge: dict | None = None) -> Knowledge:
        """The batch's knowledge, already on the device when it came through the collator;
        without it (a plain batch), read here and moved to the inputs' device."""
        if batch_knowledge is None:
            k = self.reader.read(inputs["example_id"].cpu().numpy(), self.spec, self.pairs,
                                 seq_len=inputs["input_ids"].size(1))
            batch_knowledge = {f.name: getattr(k, f.name).to(inputs["input_ids"].device)
                               for f in fields(k) if getattr(k, f.name) is not None}
        return Knowledge(**batch_knowledge)


class DistillationTrainer(Trainer):
    """``Trainer`` with ``compute_loss`` = the stage's :class:`Objective` over the student's
    outputs and the teacher's :class:`Knowledge` (online or cached: the loss sees the same
    tensors either way). In evaluation only the task loss is computed, and the teacher is not
    consulted.

    The step makes no host synchronisation of its own: the loss parts are kept as device
    tensors and turned into numbers only when they are logged.
    """

    def __init__(self, *args, objective: Objective, knowledge_source=None, pairs=None, **kwargs):
        super().__init__(*args, **kwargs)
        if knowledge_source is not None:
            knowledge_source = knowledge_source.for_objective(objective)
        self.objective, self.knowledge_source, self.pairs = objective, knowledge_source, pairs
        # training batches read the cache in the DataLoader; evaluation batches never do
        self.train_collator = knowledge_source.collator(self.data_collator) if knowledge_source else self.data_collator
        self.cache_read_seconds = 0.0
        self._parts: dict[str, torch.Tensor] = {}
        self._part_calls = 0

    def get_train_dataloader(self):
        base, self.data_collator = self.data_collator, self.train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = base

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.cache_read_seconds += inputs.pop("cache_read_seconds", 0.0)
        batch_knowledge = inputs.pop("knowledge", None)
        labels = inputs["labels"]
        model_inputs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
        distilling = model.training and self.objective.needs_teacher
        if not distilling:  # fine-tuning, or evaluation: the task loss alone
            out, _, _ = model(**model_inputs)
            loss = task_loss(out.logits, labels)
            return (loss, {"logits": out.logits}) if return_outputs else loss
        knowledge = self.knowledge_source({**model_inputs, "example_id": inputs["example_id"]}, batch_knowledge)
        wants_states = self.objective.needs_hidden or self.objective.needs_attentions
        out, s_hidden, s_att = model(
            knowledge=knowledge if wants_states else None,
            pairs=self.pairs, output_hidden_states=self.objective.needs_hidden,
            output_attentions=self.objective.needs_attentions, **model_inputs)
        loss, parts = self.objective(out.logits, labels, knowledge, s_hidden, s_att,
                                     model_inputs["attention_mask"])
        for name, value in parts.items():  # device tensors: no sync here
            self._parts[name] = self._parts[name] + value if name in self._parts else value
        self._part_calls += 1
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._parts:  # the loss terms, averaged since the last log
            logs.update({f"loss_{k}": float(v) / self._part_calls for k, v in self._parts.items()})
            self._parts, self._part_calls = {}, 0
        super().log(logs, *args, **kwargs)


def dataloader_workers(s, device: torch.device) -> int:
    """``--dataloader-num-workers``, or 2 on CUDA (cache reads and collation off the main
    process) and 0 elsewhere (on a 2-core CPU, workers compete with the step)."""
    if s.dataloader_num_workers is not None:
        return s.dataloader_num_workers
    return 2 if device.type == "cuda" else 0


def training_arguments(stage_dir: Path, stage: Stage, task: TaskSpec, s, select: bool,
                       has_dev: bool) -> TrainingArguments:
    """The Trainer settings of one stage, from :class:`hskd.config.Settings` ``s``: on
    ``--device`` (see :func:`hskd.device.resolve_device`) in ``--bf16``/``--fp16``/fp32."""
    device = resolve_device(s.device)
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
        use_cpu=device.type == "cpu",
        bf16=s.bf16,
        fp16=s.fp16,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        dataloader_num_workers=dataloader_workers(s, device),
        dataloader_pin_memory=device.type == "cuda",
        accelerator_config={"non_blocking": device.type == "cuda"},  # batches arrive without a host wait
        torch_compile=s.torch_compile,
        logging_nan_inf_filter=False,  # its isnan test on the loss is a host sync every step
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type != "cuda":
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
        metrics["cache_read_seconds"] = trainer.cache_read_seconds
    best = trainer.state.best_metric
    if best is not None:
        metrics["best_dev_metric"] = best
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = stage_dir / "stage.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, stage_dir / "stage.json")
    return metrics

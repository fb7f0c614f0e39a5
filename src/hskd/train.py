"""Training: a ``transformers.Trainer`` subclass whose ``compute_loss`` adds distillation.

The Trainer gives shuffling, dynamic padding and grouping by length, warmup and linear decay,
gradient clipping, evaluation and best-checkpoint selection each epoch, seeds, TensorBoard,
checkpoint/resume (optimizer, scheduler and RNG state) and DDP under ``torchrun``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from transformers import TrainingArguments
from transformers.trainer_callback import ProgressCallback

from hskd.checkpoints import AtomicCheckpoints, last_complete_checkpoint
from hskd.convergence import StageConvergence, converged, epoch_mean_losses
from hskd.data import MODEL_INPUTS
from hskd.device import resolve_device
from hskd.errors import HskdError
from hskd.knowledge import Knowledge, Plan, gather, student_states_full
from hskd.losses import task_loss
from hskd.models import Projection, model_inputs
from hskd.recipes import Stage
from hskd.runs import is_main_process, write_json
from hskd.sources import CachedKnowledge
from hskd.storage import decode_batch
from hskd.tasks import TaskSpec, compute_metrics
from hskd.terms import LossInputs, Objective


class DistillationModel(nn.Module):
    """The student plus what is trained with it: the projection to the teacher's width
    (TinyBERT's ``fit_dense``) and the loss terms that own parameters or buffers, of every
    stage. All are saved in every checkpoint and restored on resume.

    ``forward`` runs the student and, given the teacher's ``knowledge`` and a current
    ``objective``, gathers the student's values at the teacher's indices and computes the
    objective, so that everything trained runs inside the (possibly DDP-wrapped) forward.
    """

    # The objective is a batch mean, not a sum over ``num_items_in_batch``: this tells the Trainer
    # to divide it by the gradient-accumulation steps (``**inputs`` would make it guess otherwise,
    # and accumulation would then multiply the learning rate).
    accepts_loss_kwargs = False

    def __init__(self, student: nn.Module, teacher_hidden: int | None = None, plan: Plan | None = None):
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        self.projection = Projection(width, teacher_hidden) if teacher_hidden else None
        self.terms = nn.ModuleDict()
        self.plan, self.objective = plan, None

    def add_terms(self, objectives: list[Objective]) -> None:
        """Register the terms of these stages that own parameters or buffers (so that the
        optimizer trains them and checkpoints hold them)."""
        for i, objective in enumerate(objectives):
            for term in objective.terms:
                if any(True for _ in term.parameters()) or any(True for _ in term.buffers()):
                    self.terms[f"stage{i}_{term.name}"] = term

    def forward(self, knowledge: Knowledge | None = None, labels=None, example_id=None, **inputs):
        """Returns ``(student output, loss or None, parts)``; the loss only when distilling."""
        objective = self.objective
        needs = objective.needs if objective is not None and knowledge is not None else frozenset()
        scores = self.plan is not None and self.plan.spec.attention_scores  # recomputed from hidden states
        out = self.student(**model_inputs(inputs, self.student),
                           output_hidden_states=bool(needs & {"hidden", "relations"}) or ("attentions" in needs and scores),
                           output_attentions="attentions" in needs and not scores)
        if not needs:
            return out, None, {}
        hidden, att = gather(self.plan, out, knowledge, self.projection, student=self.student,
                             attention_mask=inputs["attention_mask"], needs=needs)
        full = student_states_full(self.plan, out, knowledge, self.projection) \
            if objective.full_width and knowledge.hidden is not None else None
        x = LossInputs(logits=out.logits, labels=labels, example_ids=example_id, knowledge=knowledge,
                       student_hidden=hidden, student_attentions=att, attention_mask=inputs["attention_mask"],
                       student_outputs=out, student=self.student, student_hidden_full=full,
                       layer_pairs=self.plan.pairs, include_padding=self.plan.spec.padding == "include")
        loss, parts = objective(x)
        return out, loss, parts


class DistillationTrainer(AtomicCheckpoints):
    """``Trainer`` with ``compute_loss`` = the stage's :class:`Objective` over the student's
    outputs and the teacher's :class:`Knowledge` (online or cached: the loss sees the same
    tensors either way). In evaluation only the task loss is computed, and the teacher is not
    consulted.

    Checkpoints are written whole or not at all (:class:`hskd.checkpoints.AtomicCheckpoints`).
    The step makes no host synchronisation of its own: the loss parts are kept as device
    tensors and turned into numbers only when they are logged.
    """

    def __init__(self, *args, objective: Objective, knowledge_source=None, **kwargs):
        super().__init__(*args, **kwargs)
        if knowledge_source is not None:
            knowledge_source = knowledge_source.for_objective(objective)
        self.objective, self.knowledge_source = objective, knowledge_source
        self.model.objective = objective  # the model runs it inside its forward
        # training batches read the cache in the DataLoader; evaluation batches never do
        self.train_collator = knowledge_source.collator(self.data_collator) if knowledge_source else self.data_collator
        self.cache_read_seconds = 0.0
        if not self.args.disable_tqdm:  # one bar per stage: no nested bar for each evaluation
            self.remove_callback(ProgressCallback)
            self.add_callback(_StageProgress)
        self._parts: dict[str, torch.Tensor] = {}
        self._part_calls = 0

    def get_train_dataloader(self):
        base, self.data_collator = self.data_collator, self.train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = base

    def _prepare_inputs(self, inputs: dict) -> dict:
        """The batch on the device, with cached hidden values decoded there (int8, fp8, bf16
        storage): in the data path, before the step, so only the compact form was copied."""
        inputs = super()._prepare_inputs(inputs)
        if isinstance(inputs.get("knowledge"), dict):
            inputs["knowledge"] = decode_batch(inputs["knowledge"])
        return inputs

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
        out, loss, parts = model(knowledge=knowledge, labels=labels, example_id=inputs["example_id"], **model_inputs)
        for name, value in parts.items():  # device tensors: no sync here
            self._parts[name] = self._parts[name] + value if name in self._parts else value
        self._part_calls += 1
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._parts:  # the loss terms, averaged since the last log
            logs.update({f"loss_{k}": float(v) / self._part_calls for k, v in self._parts.items()})
            self._parts, self._part_calls = {}, 0
        _refuse_non_finite(logs, self.state.global_step)
        super().log(logs, *args, **kwargs)


class _StageProgress(ProgressCallback):
    """The Trainer's progress bar without the nested one it opens for every evaluation."""

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        return


def _refuse_non_finite(logs: dict, step: int) -> None:
    """Stop a run whose loss is no longer a number (checked when the loss is logged, so the
    step itself makes no host sync): a one-line error naming the step and the term.

    Raises:
        HskdError: a non-finite ``loss`` or ``loss_TERM`` (or ``train_loss``) in ``logs``.
    """
    bad = {k: v for k, v in logs.items() if (k == "loss" or k.startswith("loss_") or k == "train_loss")
           and isinstance(v, float) and not math.isfinite(v)}
    if bad:
        terms = [k[5:] for k in bad if k.startswith("loss_")]
        where = f" in term {', '.join(terms)}" if terms else ""
        raise HskdError(f"the loss became {next(iter(bad.values()))} by step {step}{where}, so the run stopped "
                        "unfinished; lower the learning rate or check the recipe's weights and the data")


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
        lr_scheduler_type=stage.scheduler,  # linear, or constant (MUD's HSK stage)
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
        # --resume keeps early stopping's patience count, so a resumed run stops where an
        # uninterrupted one would
        restore_callback_states_from_checkpoint=bool(s.early_stopping_patience),
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type != "cuda":
        kwargs["ddp_backend"] = "gloo"
    kwargs.update(s.training_args or {})  # --save_total_limit ... : the user's TrainingArguments win
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as exc:
        raise HskdError(f"bad Trainer setting ({str(exc).splitlines()[0][:200]}); fix the flag or training_args") from None


def _broadcast(value):
    """Rank 0's ``value`` on every rank (under torchrun)."""
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def metrics_fn(task: TaskSpec):
    def compute(pred):
        return compute_metrics(task, pred.predictions, pred.label_ids)
    return compute


def stop_if_converged(trainer, checkpoint: Path, tolerance: float) -> None:
    """A stage resumed from the checkpoint of an epoch after which it had converged (killed
    before it finished) trains no further: the Trainer ends at the checkpoint's step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    epoch = float(state.get("epoch") or 0)
    if abs(epoch - round(epoch)) < 1e-9 and converged(state.get("log_history", []), round(epoch), tolerance):
        trainer.args.max_steps = int(state["global_step"])


def run_stage(stage_dir: Path, stage: Stage, model: DistillationModel, task: TaskSpec, s, train_ds,
              dev_ds, collator, knowledge_source, resume: bool) -> dict:
    """Train one stage; resume from its newest complete checkpoint when asked and one exists.

    Returns the Trainer's train metrics plus ``train_seconds`` and ``train_examples_per_second``.
    """
    select = stage.select_best and dev_ds is not None
    args = training_arguments(stage_dir, stage, task, s, select, dev_ds is not None)
    callbacks = list(s.callbacks or [])
    if s.early_stopping_patience and select:  # stop once dev has not improved for N evaluations
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=s.early_stopping_patience))
    converge = bool(s.stage_convergence) and not stage.select_best
    if converge:  # no dev metric here: stop once an epoch no longer lowers the training loss
        callbacks.append(StageConvergence(s.stage_convergence))
    trainer = DistillationTrainer(
        model=model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=dev_ds,
        compute_metrics=metrics_fn(task), objective=stage.objective,
        knowledge_source=knowledge_source, callbacks=callbacks or None)
    checkpoint = last_complete_checkpoint(stage_dir) if resume and is_main_process() else None
    if resume and torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank resumes from the checkpoint rank 0 chose
        checkpoint = _broadcast(checkpoint)
    if converge and checkpoint is not None:
        stop_if_converged(trainer, Path(checkpoint), s.stage_convergence)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - start
    metrics = dict(result.metrics)
    metrics["train_seconds"] = seconds
    metrics["global_step"] = trainer.state.global_step
    metrics["max_steps"] = trainer.state.max_steps
    if isinstance(trainer.knowledge_source, CachedKnowledge):
        metrics["cache_read_seconds"] = trainer.cache_read_seconds
    if converge:
        metrics["epoch_train_loss"] = {str(i): v for i, v in epoch_mean_losses(trainer.state.log_history).items()}
    best = trainer.state.best_metric
    if best is not None:
        metrics["best_dev_metric"] = best
    if is_main_process():
        write_json(stage_dir / "stage.json", metrics)
    return metrics

"""The training jobs: ``finetune`` and ``distill``, one model trained into one run folder.

Each job checks every input before it writes anything, records itself in ``DIR/hskd.json``
(see :mod:`hskd.runs`) and trains its recipe's stages in order, resuming finished ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from transformers import set_seed

from hskd import models
from hskd.cache import CacheReader, barrier
from hskd.config import Settings
from hskd.data import Collator, knowledge_pad_to, load_data, max_length, tokenize
from hskd.device import precision_dtype
from hskd.errors import HskdError
from hskd.evaluation import evaluate_model
from hskd.files import save_atomic
from hskd.job_inputs import (
    cache_fingerprint,
    needs_eager,
    parse_layers,
    run_device,
    run_environment,
    with_changes,
)
from hskd.locks import OutputLock
from hskd.model_card import check_push, push_to_hub, write_model_card
from hskd.recipes import load_recipe, recipe_spec, recipe_stages
from hskd.runs import (
    export_model,
    fingerprint_settings,
    is_main_process,
    prepare_output,
    read_record,
    start_output,
    write_record,
)
from hskd.sources import CachedKnowledge, OnlineTeacher
from hskd.terms import TermContext
from hskd.train import DistillationModel, run_stage


def finetune(s: Settings) -> dict:
    """Fine-tune ``s.model`` (first ``s.layers`` layers, or all) on the task: how the teacher
    is made, and the plain-fine-tuning baseline of students. Returns the run record."""
    s = with_changes(s, recipe="finetune")
    return train_job(s, "finetune", backbone=s.model, layers=parse_layers(s.layers),
                      learning_rate=s.learning_rate)


def distill(s: Settings) -> dict:
    """Build a student and train it with ``s.recipe``, from ``s.teacher`` or ``s.cache``."""
    load_recipe(s.recipe)  # an unknown recipe fails here, before anything is loaded
    return train_job(s, "distill", backbone=s.student_model, layers=parse_layers(s.student_layers),
                      learning_rate=s.student_learning_rate, hidden_size=s.student_hidden_size)


def train_job(s: Settings, job: str, backbone: str | None, layers, learning_rate: float,
               reuse: bool = False, hidden_size: int | None = None) -> dict:
    """Fine-tune or distill one model into ``s.output_dir``; the shared body of the jobs.

    ``backbone``/``layers``/``hidden_size`` define the model trained (see
    :func:`hskd.models.build_student`). With ``reuse``, a finished identical run is returned as is.
    """
    if not s.output_dir:
        raise HskdError("give --output-dir")
    check_push(s.push_to_hub, s.hub_model_id)
    with OutputLock(s.output_dir) as lock:  # before the folder is read, written or deleted
        return _train_job(s, job, backbone, layers, learning_rate, reuse, hidden_size, lock)


def _train_job(s: Settings, job: str, backbone: str | None, layers, learning_rate: float,
               reuse: bool, hidden_size: int | None, lock: OutputLock) -> dict:
    set_seed(s.seed)
    s = with_changes(s, learning_rate=learning_rate)
    device = run_device(s)
    fp = fingerprint_settings(s, job, backbone, layers)
    out, state = prepare_output(s.output_dir, job, fp, s, reuse=reuse)
    if state == "complete":
        return read_record(out)
    spec = recipe_spec(s.recipe, s)
    _refuse_inputs_as_output(out, s)
    # Everything that can fail on user input is checked before the output directory is touched.
    teacher = reader = None
    if spec is not None and s.cache:
        if not (Path(s.cache).expanduser() / "manifest.json").is_file():
            CacheReader(s.cache)  # raises the right message (missing, or interrupted)
    elif spec is not None:
        if not s.teacher:
            raise HskdError("give --teacher DIR (a fine-tuned model) or --cache DIR")
        teacher_path = models.resolve_model(s.teacher)
        teacher = models.load_classifier(teacher_path, None,  # its saved labels, checked below
                                         attentions=needs_eager(spec, teacher_path))
    data = load_data(s, labels_from_model=teacher)
    task = data.task
    if teacher is not None:
        models.check_labels(teacher, task, "teacher")
    student_tok = models.load_tokenizer(backbone)
    aligned = spec is not None and (spec.hidden or spec.attentions or spec.relations)  # token by token
    teacher_tok = models.load_tokenizer(s.teacher) if teacher is not None else None
    cross = teacher_tok is not None and not models.same_tokenizer(teacher_tok, student_tok)
    if cross and aligned:
        raise HskdError(f"recipe {s.recipe} distills token-aligned knowledge (hidden states or attentions), which "
                        "needs the teacher's tokenizer, and the student tokenizes differently; use a soft-label "
                        "recipe (kd) or a --student-model with the teacher's tokenizer")
    max_len = max_length(s, data)
    models.check_positions(models.load_config(backbone), max_len, "model")
    if teacher is not None:
        models.check_positions(teacher.config, max_len, "teacher")
    if spec is not None and s.cache:
        # with --teacher too (and there), the cache must come from that teacher; a teacher that is
        # gone is not needed: the cache alone trains the student
        teacher_dir = str(Path(s.teacher).expanduser()) if s.teacher and Path(s.teacher).expanduser().is_dir() else None
        expect = cache_fingerprint(task, data, student_tok, max_len, teacher_dir)
        if not aligned:  # soft labels are per example: the teacher may have tokenized them its own way
            expect = {k: v for k, v in expect.items() if k not in ("tokenizer_sha256", "max_seq_length")}
        reader = CacheReader(s.cache, expect=expect, storage=s.storage)
        cached_labels = reader.manifest["fingerprint"].get("teacher_labels")
        if cached_labels is not None and cached_labels != list(task.labels or []):
            raise HskdError(f"cache {s.cache} was extracted from a teacher with labels {cached_labels}, but "
                            f"{task.name}'s are {list(task.labels or [])}; rebuild the cache with hskd cache")
    student = models.build_student(backbone, task, layers=layers,
                                   hidden_size=hidden_size,
                                   attentions=bool(spec and spec.attentions and not spec.attention_scores))
    n_student = student.config.num_hidden_layers
    n_teacher = teacher.config.num_hidden_layers if teacher is not None else (
        reader.manifest["teacher_layers"] if reader else 0)
    plan = spec.resolve(n_student, n_teacher) if spec is not None else None
    teacher_hidden = None
    if spec is not None and spec.hidden:
        teacher_hidden = teacher.config.hidden_size if teacher is not None else reader.manifest["teacher_hidden"]
    context = TermContext(student_hidden=student.config.hidden_size, teacher_hidden=teacher_hidden,
                          student_heads=student.config.num_attention_heads,
                          teacher_heads=teacher.config.num_attention_heads if teacher is not None else None,
                          n_examples=len(data.train))
    stages = recipe_stages(s.recipe, s, plan, context)
    if reader is not None:
        reader.serving(plan)  # refuse a cache that cannot serve this plan, before writing
    train_ds = tokenize(data.train, student_tok, max_len)
    dev_name = next(iter(data.dev))
    dev_ds = tokenize(data.dev[dev_name], student_tok, max_len)

    start_output(out, state, job, fp, s, run_environment(s), lock)
    barrier()  # under torchrun, the other ranks wait for rank 0's directory
    wrapper = DistillationModel(student, teacher_hidden, plan)
    wrapper.add_terms([stage.objective for stage in stages])
    source, pad_to = None, knowledge_pad_to(spec, max_len)
    if spec is not None:
        teacher_data = tokenize(data.train, teacher_tok, max_len) if cross and not reader else None
        source = CachedKnowledge(reader, plan) if reader else OnlineTeacher(
            teacher, plan, student_tok.sep_token_id, device=device, dtype=precision_dtype(s.bf16, s.fp16),
            teacher_data=teacher_data, teacher_collator=Collator(teacher_tok, pad_to) if teacher_data is not None else None)
    collator = Collator(student_tok, pad_to)
    stage_results = []
    for i, stage in enumerate(stages):
        stage_dir = out / "checkpoints" / f"{i:02d}-{stage.name}"
        final = stage_dir / "final.safetensors"
        if final.exists() and (s.resume or state == "resume"):
            wrapper.load_state_dict(load_file(final))
            stage_results.append(json.loads((stage_dir / "stage.json").read_text()))
            continue
        if is_main_process():  # under torchrun a faster rank must not fill the folder rank 0 still checks
            stage_dir.mkdir(parents=True, exist_ok=True)
        result = run_stage(stage_dir, stage, wrapper, task, s, train_ds, dev_ds, collator, source, resume=s.resume)
        if is_main_process():
            save_atomic({k: v.contiguous() for k, v in wrapper.state_dict().items()}, final)
        result["stage"] = stage.name
        stage_results.append(result)
    train_seconds = sum(r["train_seconds"] for r in stage_results)
    train_examples = sum(r.get("train_samples_per_second", 0) * r["train_seconds"] for r in stage_results)
    record = {"job": job, "status": "complete", "settings": fp, "task": task.name,
              "recipe": s.recipe, "stages": stage_results, "train_seconds": train_seconds,
              "train_examples_per_second": train_examples / train_seconds if train_seconds else None,
              "knowledge": spec.to_dict() if spec else None, "layer_pairs": [list(p) for p in plan.pairs] if plan else [],
              "cache": str(s.cache) if reader else None,
              "cache_megabytes": reader.manifest["megabytes"] if reader else None,
              "environment": run_environment(s)}
    if not is_main_process():
        return record
    export_model(wrapper.student, student_tok, out)
    if wrapper.projection is not None and wrapper.projection.linear is not None:
        save_atomic({k: v.contiguous() for k, v in wrapper.projection.state_dict().items()},
                    out / "projection.safetensors")
    record["eval"] = evaluate_model(out, data, s)
    write_model_card(out, record, backbone, s.teacher if job == "distill" else None,
                     task.hub_config if not (s.train_file or s.dataset) else None)
    write_record(out, record)
    if s.push_to_hub:
        print(f"pushed to {push_to_hub(out, s.hub_model_id)}")
    return record


def _refuse_inputs_as_output(out: Path, s: Settings) -> None:
    """``--output-dir`` may not be (or hold) the teacher or the cache the job reads.

    Raises:
        HskdError: it is.
    """
    for name in ("teacher", "cache"):
        value = getattr(s, name)
        if value and Path(value).expanduser().exists():
            source = Path(value).expanduser().resolve()
            if source == out.resolve() or out.resolve() in source.parents:
                raise HskdError(f"--output-dir {out} is where the {name} is; choose another --output-dir")

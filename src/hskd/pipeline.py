"""The jobs behind the command line: finetune, cache, distill, evaluate and run.

Each job validates its inputs before it writes anything, records itself in ``DIR/hskd.json``
and refuses to touch a directory that holds a different run unless told to (``--overwrite``
or ``--resume``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import set_seed

from hskd import models
from hskd.cache import CacheReader, barrier, partial_dir, write_cache
from hskd.config import Settings
from hskd.data import MODEL_INPUTS, Collator, tokenize
from hskd.device import check_precision, device_description, environment, precision_dtype, resolve_device, synchronize
from hskd.errors import HskdError
from hskd.recipes import RECIPES, recipe_spec, recipe_stages
from hskd.tasks import TaskData, compute_metrics, custom_task, get_task, load_custom, load_glue
from hskd.train import CachedKnowledge, DistillationModel, OnlineTeacher, run_stage

RECORD = "hskd.json"
# Settings that do not change a run's result: a run may resume with other values of these.
RUN_CONTROL = {"output_dir", "overwrite", "resume", "quiet", "callbacks", "cache", "device",
               "dataloader_num_workers", "torch_compile"}
# Settings that change the result but came later: left out of the fingerprint at their default,
# so that runs made before them are still recognised (reused, resumed).
LATER_DEFAULTS = {"bf16": False, "fp16": False, "gradient_accumulation_steps": 1}


# ------------------------------------------------------------------------------ helpers
def load_data(s: Settings, labels_from_model=None) -> TaskData:
    """The task's train and dev splits, GLUE or custom, per the settings.

    ``labels_from_model``: a teacher whose saved label order custom data must follow.
    """
    if s.train_file:
        if not s.task:
            raise HskdError("give --task NAME for custom data (any name)")
        if not s.text_columns or not s.label_column:
            raise HskdError("custom data needs --text-columns a[,b] and --label-column y")
        labels = s.labels.split(",") if s.labels else None
        if labels is None and labels_from_model is not None and s.task_type != "regression":
            cfg = labels_from_model.config
            labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        task = custom_task(s.task, s.text_columns.split(","), s.label_column, labels,
                           s.task_type == "regression")
        data = load_custom(task, s.train_file, s.validation_file, s.max_train_samples)
    else:
        if not s.task:
            raise HskdError("give --task (a GLUE task such as SST-2, or a name for custom data)")
        data = load_glue(get_task(s.task), s.data_dir, s.max_train_samples)
    if s.max_eval_samples:
        data.dev = {k: v.select(range(min(s.max_eval_samples, len(v)))) for k, v in data.dev.items()}
    return data


def parse_layers(text) -> int | list[int] | None:
    """``"3"`` -> 3 (the first three layers); ``"0,2,4"`` -> [0, 2, 4]."""
    if text in (None, "", "all"):
        return None
    if isinstance(text, int):
        return text
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise HskdError(f"bad layer list {text!r}: write a count (3) or indices (0,2,4)") from None
    return parts[0] if len(parts) == 1 and "," not in str(text) else parts


def max_length(s: Settings, data: TaskData) -> int:
    return s.max_seq_length or data.task.max_seq_length


COMMON = ("task", "data_dir", "train_file", "validation_file", "text_columns", "label_column", "labels",
          "task_type", "max_train_samples", "max_eval_samples", "max_seq_length", "num_train_epochs",
          "batch_size", "eval_batch_size", "warmup_ratio", "weight_decay", "seed", "max_steps", "save_steps",
          *LATER_DEFAULTS)


def fingerprint_settings(s: Settings, job: str, backbone=None, layers=None) -> dict:
    """The settings that define a job's result: a directory holding other settings holds a
    different run. Fine-tuning ignores distillation settings, so `run` can reuse a teacher."""
    data = {k: v for k, v in s.to_yaml_dict().items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}
    if job == "finetune":
        keep = {k: data[k] for k in COMMON if k in data}
        return {"job": job, "backbone": backbone, "layers": layers, "learning_rate": s.learning_rate, **keep}
    return {"job": job, **{k: v for k, v in data.items() if k not in RUN_CONTROL}}


def prepare_output(path: str | None, job: str, settings_fp: dict, s: Settings, reuse: bool = False) -> tuple[Path, str]:
    """Check the output directory before any work. Returns (path, state) with state one of
    ``new``, ``resume`` or ``complete`` (only when ``reuse``: a finished identical run).

    Raises:
        HskdError: it holds a different or unfinished run and neither --overwrite nor
            --resume was given.
    """
    if not path:
        raise HskdError("give --output-dir")
    out = Path(path).expanduser()
    if not is_main_process():  # under torchrun, rank 0 checks and writes the directory
        return out, "resume" if s.resume else "new"
    if out.exists() and not out.is_dir():
        raise HskdError(f"--output-dir {out} is a file; give a directory")
    if not out.exists() or not any(out.iterdir()):
        return out, "new"
    record = out / RECORD
    info = json.loads(record.read_text()) if record.is_file() else None
    if info is None:  # never delete or write into a folder that hskd did not make
        raise HskdError(f"{out} holds files that are not an hskd run; choose another --output-dir")
    same = info.get("settings") == settings_fp
    if s.overwrite:
        return out, "overwrite"
    if same and info.get("status") == "complete" and reuse:
        return out, "complete"
    if same and s.resume:
        return out, "resume"
    if not same:
        raise HskdError(f"{out} holds a different run; pass --overwrite to replace it, or choose another "
                        "--output-dir (--resume continues only the same run)")
    what = "a finished run" if info.get("status") == "complete" else "an unfinished run"
    raise HskdError(f"{out} holds {what}; pass --resume to continue it or --overwrite to replace it, "
                    "or choose another --output-dir")


def start_output(out: Path, state: str, job: str, settings_fp: dict, s: Settings) -> None:
    if not is_main_process():
        return
    if state == "overwrite":
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, {"job": job, "status": "running", "settings": settings_fp})
    s.save(out / "config.yaml", environment=run_environment(s))


def write_record(out: Path, data: dict, name: str = RECORD) -> None:
    tmp = out / (name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, out / name)


def read_record(out: Path) -> dict:
    return json.loads((out / RECORD).read_text())


def export_model(model, tokenizer, out: Path) -> None:
    """Save a Hugging Face model + tokenizer into ``out``, file by file atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_device(s: Settings) -> torch.device:
    """The device of this run (``--device`` or the accelerator), with its precision checked.

    Raises:
        HskdError: the device is not there, or cannot run ``--bf16``/``--fp16``.
    """
    device = resolve_device(s.device)
    check_precision(device, s.bf16, s.fp16)
    return device


def run_environment(s: Settings) -> dict:
    """Device, precision and versions, for ``config.yaml`` and ``hskd.json``."""
    return environment(resolve_device(s.device), s.bf16, s.fp16)


# ------------------------------------------------------------------------------- jobs
def finetune(s: Settings) -> dict:
    """Fine-tune ``s.model`` (first ``s.layers`` layers, or all) on the task: how the teacher
    is made, and the plain-fine-tuning baseline of students. Returns the run record."""
    s = _copy(s, recipe="finetune")
    return _train_job(s, "finetune", backbone=s.model, layers=parse_layers(s.layers),
                      learning_rate=s.learning_rate)


def distill(s: Settings) -> dict:
    """Build a student and train it with ``s.recipe``, from ``s.teacher`` or ``s.cache``."""
    if s.recipe not in RECIPES:
        raise HskdError(f"unknown recipe {s.recipe!r}: use one of {', '.join(RECIPES)}")
    return _train_job(s, "distill", backbone=s.student_model, layers=parse_layers(s.student_layers),
                      learning_rate=s.student_learning_rate, hidden_size=s.student_hidden_size)


def _copy(s: Settings, **changes) -> Settings:
    data = s.to_yaml_dict()
    data.update(changes)
    copy = Settings(**data)
    copy.callbacks = s.callbacks
    return copy


def _train_job(s: Settings, job: str, backbone: str | None, layers, learning_rate: float,
               reuse: bool = False, hidden_size: int | None = None) -> dict:
    """Fine-tune or distill one model into ``s.output_dir``; the shared body of the jobs.

    ``backbone``/``layers``/``hidden_size`` define the model trained (see
    :func:`hskd.models.build_student`). With ``reuse``, a finished identical run is returned as is.
    """
    set_seed(s.seed)
    s = _copy(s, learning_rate=learning_rate)
    device = run_device(s)
    fp = fingerprint_settings(s, job, backbone, layers)
    out, state = prepare_output(s.output_dir, job, fp, s, reuse=reuse)
    if state == "complete":
        return read_record(out)
    spec = recipe_spec(s.recipe, s)
    # Everything that can fail on user input is checked before the output directory is touched.
    teacher = reader = None
    if spec is not None and s.cache:
        if not (Path(s.cache).expanduser() / "manifest.json").is_file():
            CacheReader(s.cache)  # raises the right message (missing, or interrupted)
    elif spec is not None:
        if not s.teacher:
            raise HskdError("give --teacher DIR (a fine-tuned model) or --cache DIR")
        teacher_path = models.resolve_model(s.teacher)
        teacher = models.load_classifier(teacher_path, _probe_task(s, teacher_path),
                                         attentions=_needs_eager(spec, teacher_path))
    data = load_data(s, labels_from_model=teacher)
    task = data.task
    if teacher is not None:
        models.check_labels(teacher, task, "teacher")
    student_tok = models.load_tokenizer(backbone)
    if teacher is not None:
        models.check_same_tokenizer(models.load_tokenizer(s.teacher), student_tok)
    max_len = max_length(s, data)
    if spec is not None and s.cache:
        reader = CacheReader(s.cache, expect=cache_fingerprint(task, data, student_tok, max_len, None))
    student = models.build_student(backbone, task, layers=layers,
                                   hidden_size=hidden_size,
                                   attentions=bool(spec and spec.attentions))
    n_student = student.config.num_hidden_layers
    n_teacher = teacher.config.num_hidden_layers if teacher is not None else (
        reader.manifest["teacher_layers"] if reader else 0)
    pairs = spec.layer_pairs(n_student, n_teacher) if spec and (spec.hidden or spec.attentions) else []
    stages = recipe_stages(s.recipe, s, len(pairs))
    if reader is not None:
        reader.plan(spec, pairs)  # refuse a cache that cannot serve this spec, before writing
    train_ds = tokenize(data.train, student_tok, max_len)
    dev_name = next(iter(data.dev))
    dev_ds = tokenize(data.dev[dev_name], student_tok, max_len)

    start_output(out, state, job, fp, s)
    barrier()  # under torchrun, the other ranks wait for rank 0's directory
    teacher_hidden = None
    if spec is not None and spec.hidden:
        teacher_hidden = teacher.config.hidden_size if teacher is not None else reader.manifest["teacher_hidden"]
    wrapper = DistillationModel(student, teacher_hidden)
    source = None
    if spec is not None:
        source = CachedKnowledge(reader, spec, pairs) if reader else OnlineTeacher(
            teacher, spec, pairs, student_tok.sep_token_id, device=device, dtype=precision_dtype(s.bf16, s.fp16))
    collator = Collator(student_tok)
    stage_results = []
    for i, stage in enumerate(stages):
        stage_dir = out / "checkpoints" / f"{i:02d}-{stage.name}"
        final = stage_dir / "final.safetensors"
        if final.exists() and (s.resume or state == "resume"):
            wrapper.load_state_dict(load_file(final))
            stage_results.append(json.loads((stage_dir / "stage.json").read_text()))
            continue
        stage_dir.mkdir(parents=True, exist_ok=True)
        result = run_stage(stage_dir, stage, wrapper, task, s, train_ds, dev_ds, collator, source, pairs,
                           resume=s.resume)
        if is_main_process():
            save_file({k: v.contiguous() for k, v in wrapper.state_dict().items()}, final)
        result["stage"] = stage.name
        stage_results.append(result)
    train_seconds = sum(r["train_seconds"] for r in stage_results)
    train_examples = sum(r.get("train_samples_per_second", 0) * r["train_seconds"] for r in stage_results)
    record = {"job": job, "status": "complete", "settings": fp, "task": task.name,
              "recipe": s.recipe, "stages": stage_results, "train_seconds": train_seconds,
              "train_examples_per_second": train_examples / train_seconds if train_seconds else None,
              "knowledge": spec.to_dict() if spec else None, "layer_pairs": pairs,
              "cache": str(s.cache) if reader else None,
              "cache_megabytes": reader.manifest["megabytes"] if reader else None,
              "environment": run_environment(s)}
    if not is_main_process():
        return record
    export_model(wrapper.student, student_tok, out)
    if wrapper.projection is not None and wrapper.projection.linear is not None:
        save_file({k: v.contiguous() for k, v in wrapper.projection.state_dict().items()},
                  out / "projection.safetensors")
    record["eval"] = evaluate_model(out, data, s)
    write_record(out, record)
    return record


def _needs_eager(spec, model_path: str) -> bool:
    return models.needs_eager_attention(spec, models.load_config(model_path))


def _probe_task(s: Settings, teacher_path: str):
    """The task spec to load the teacher with (custom tasks take the teacher's own labels)."""
    if s.train_file:
        cfg = models.load_config(teacher_path)
        labels = s.labels.split(",") if s.labels else [cfg.id2label[i] for i in range(cfg.num_labels)]
        return custom_task(s.task or "custom", (s.text_columns or "x").split(","), s.label_column or "y",
                           labels, s.task_type == "regression")
    return get_task(s.task or "")


def cache_fingerprint(task, data: TaskData, tokenizer, max_len: int, teacher_dir: str | None) -> dict:
    """What a cache must agree with: task and labels, training data, tokenizer, max length
    (and, when known, the teacher's weights)."""
    fp = {"task": task.name, "labels": list(task.labels) if task.labels else None,
          "data_sha256": data.sources["train"]["sha256"], "rows": len(data.train),
          "tokenizer_sha256": models.vocab_fingerprint(tokenizer), "max_seq_length": max_len}
    if teacher_dir:
        fp["teacher_sha256"] = models.weights_fingerprint(teacher_dir)
    return fp


def make_cache(s: Settings, stop_after_batches: int | None = None) -> dict:
    """Run the teacher once over the training set and store its selected knowledge."""
    if not s.teacher:
        raise HskdError("give --teacher DIR (a fine-tuned model)")
    if not s.output_dir:
        raise HskdError("give --output-dir CACHE_DIR")
    spec = cache_spec(s)
    device = run_device(s)
    out = Path(s.output_dir).expanduser()
    if (out / "manifest.json").exists() and not s.overwrite:
        raise HskdError(f"{out} already holds a cache; pass --overwrite to rebuild it")
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise HskdError(f"{out} holds other files; choose another --output-dir")
    teacher_path = models.resolve_model(s.teacher)
    teacher = models.load_classifier(teacher_path, _probe_task(s, teacher_path),
                                     attentions=_needs_eager(spec, teacher_path))
    data = load_data(s, labels_from_model=teacher)
    models.check_labels(teacher, data.task, "teacher")
    tok = models.load_tokenizer(teacher_path)
    max_len = max_length(s, data)
    n_student = _student_depth(s)
    pairs = spec.layer_pairs(n_student, teacher.config.num_hidden_layers) if (spec.hidden or spec.attentions) else []
    fp = cache_fingerprint(data.task, data, tok, max_len, teacher_path)
    fp["spec"] = spec.to_dict()
    fp["student_layers"] = n_student
    if s.overwrite and is_main_process():
        shutil.rmtree(partial_dir(out), ignore_errors=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")  # each rank writes a disjoint range of rows
    ds = tokenize(data.train, tok, max_len)
    teacher.to(device=device, dtype=precision_dtype(s.bf16, s.fp16))
    manifest = write_cache(out, teacher, ds, Collator(tok), spec, pairs, fp, tok.sep_token_id, max_len,
                           batch_size=s.eval_batch_size, stop_after_batches=stop_after_batches,
                           progress=not s.quiet, environment=run_environment(s))
    return manifest


def _student_depth(s: Settings) -> int:
    layers = parse_layers(s.student_layers)
    if isinstance(layers, list):
        return len(layers)
    if layers is None:
        return models.load_config(s.student_model).num_hidden_layers
    return layers


def cache_spec(s: Settings):
    """The spec a cache is built at: ``--knowledge`` (budget or mapping) or the recipe's."""
    from hskd.recipes import knowledge_spec

    if s.knowledge and s.recipe not in ("ird",):
        return knowledge_spec(s)
    spec = recipe_spec(s.recipe, s)
    if spec is None:
        raise HskdError("nothing to cache for recipe finetune; give --knowledge or another --recipe")
    return spec


def evaluate_model(model_dir: str | Path, data: TaskData, s: Settings) -> dict:
    """Official dev metrics, dev inference examples/s, parameters and layers of a saved model.

    A plain inference loop in this process (batch ``eval_batch_size``, per-batch padding):
    under torchrun only rank 0 evaluates, on the whole dev set.
    """
    import numpy as np

    model_dir = Path(model_dir)
    device = run_device(s)
    model = models.load_classifier(str(model_dir), None).eval()
    models.check_labels(model, data.task, "model")
    model.to(device)
    # --bf16/--fp16 evaluate under autocast, as the Trainer's evaluation does
    autocast = torch.autocast(device.type, dtype=precision_dtype(s.bf16, s.fp16), enabled=s.bf16 or s.fp16)
    tok = models.load_tokenizer(str(model_dir))
    max_len = max_length(s, data)
    collate = Collator(tok)
    wall = time.perf_counter()
    splits, seconds, count = {}, 0.0, 0
    for name, split in data.dev.items():
        ds = tokenize(split, tok, max_len)
        logits, labels = [], []
        for lo in range(0, len(ds), s.eval_batch_size):
            batch = collate([ds[i] for i in range(lo, min(len(ds), lo + s.eval_batch_size))])
            synchronize(device)
            start = time.perf_counter()
            with torch.inference_mode(), autocast:
                out = model(**{k: batch[k].to(device) for k in MODEL_INPUTS if k in batch})
                batch_logits = out.logits.float().cpu()  # waits for the device: the timing is complete
            seconds += time.perf_counter() - start
            logits.append(batch_logits.numpy())
            labels.append(batch["labels"].numpy())
        count += len(ds)
        splits[name] = compute_metrics(data.task, np.concatenate(logits), np.concatenate(labels))
    main = splits[next(iter(splits))][data.task.main_metric]
    return {"dev": splits, "main_metric": data.task.main_metric, "main_value": main,
            "eval_examples_per_second": count / seconds,
            "parameters": models.count_parameters(model), "layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size, "device": device_description(device),
            "eval_seconds": time.perf_counter() - wall}


def evaluate(s: Settings, model_dir: str) -> dict:
    """``hskd evaluate``: load a saved model and score it on the task's dev set(s)."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise HskdError(f"model directory not found: {path}")
    probe = models.load_classifier(str(path), None) if s.train_file else None
    data = load_data(s, labels_from_model=probe)
    return evaluate_model(path, data, s)


def run(s: Settings) -> dict:
    """The main job: teacher, student-finetune and distilled student, evaluated and reported."""
    from hskd.report import write_run_report

    if not s.output_dir:
        raise HskdError("give --output-dir")
    out = Path(s.output_dir).expanduser()
    load_data(s)  # fail on bad data before anything is written
    fp = fingerprint_settings(s, "run")
    record = out / "run.json"
    if out.is_file():
        raise HskdError(f"--output-dir {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not record.exists():
        raise HskdError(f"{out} holds files that are not an hskd run; choose another --output-dir")
    if record.exists() and not s.overwrite and json.loads(record.read_text()).get("settings") != fp:
        raise HskdError(f"{out} holds a different run; pass --overwrite to replace it, or choose another "
                        "--output-dir")
    main = is_main_process()
    if main:
        if s.overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({"settings": fp, "status": "running"}, indent=2, default=str))
        s.save(out / "config.yaml", environment=run_environment(s))
    child = dict(overwrite=False, resume=True)
    start = time.perf_counter()
    teacher = _train_job(_copy(s, output_dir=str(out / "teacher"), recipe="finetune", **child), "finetune",
                         backbone=s.model, layers=None, learning_rate=s.learning_rate, reuse=True)
    baseline = _train_job(_copy(s, output_dir=str(out / "student-finetune"), recipe="finetune", **child),
                          "finetune", backbone=s.student_model, layers=parse_layers(s.student_layers),
                          learning_rate=s.student_learning_rate, reuse=True, hidden_size=s.student_hidden_size)
    student_s = _copy(s, output_dir=str(out / "student"), teacher=str(out / "teacher"), **child)
    cache = None
    if s.recipe == "mud" and not s.cache:  # MUD's point: extract the HSK once, train without the teacher
        cache_dir = out / "cache"
        if not (cache_dir / "manifest.json").is_file():
            make_cache(_copy(student_s, output_dir=str(cache_dir), overwrite=False))
        barrier()
        cache = CacheReader(cache_dir, verify=False).manifest
        student_s = _copy(student_s, cache=str(cache_dir))
    student = _train_job(student_s, "distill", backbone=s.student_model, layers=parse_layers(s.student_layers),
                         learning_rate=s.student_learning_rate, reuse=True, hidden_size=s.student_hidden_size)
    results = {"teacher": teacher, "student-finetune": baseline, "student": student}
    if not main:
        return {}
    timings = stage_timings(results, cache)
    metrics = write_run_report(out, results, s, timings)
    write_record(out, {"settings": fp, "status": "complete", "seconds": time.perf_counter() - start,
                       "timings": timings, "environment": run_environment(s)}, name="run.json")
    return metrics


def stage_timings(results: dict[str, dict], cache: dict | None) -> list[dict]:
    """Wall-clock seconds of each stage of ``hskd run``, in order: training of each model (one
    row per stage of a multi-stage recipe), the cache extraction, and each evaluation. Records
    that were reused from an earlier run keep the times measured then."""
    rows = []
    for name, rec in results.items():
        if name == "student" and cache is not None:
            rows.append({"stage": "cache (extraction)", "seconds": cache.get("extract_seconds")})
        for stage in rec.get("stages", []):
            label = name if len(rec["stages"]) == 1 else f"{name}: {stage.get('stage')}"
            rows.append({"stage": f"{label} (training)", "seconds": stage.get("train_seconds")})
        rows.append({"stage": f"{name} (evaluation)", "seconds": rec.get("eval", {}).get("eval_seconds")})
    return rows

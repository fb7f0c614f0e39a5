"""``hskd run``, the main job: teacher, student-finetune and the distilled student (with
``mud``, from a cache extracted once: teacher-free), evaluated and reported, with the
wall-clock of every stage."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from hskd.cache import CacheReader, barrier, refuse_uncacheable
from hskd.cache_job import cache_spec, make_cache
from hskd.config import Settings
from hskd.data import load_data
from hskd.errors import HskdError
from hskd.files import read_json
from hskd.job_inputs import parse_layers, run_environment, with_changes
from hskd.jobs import train_job
from hskd.locks import OutputLock
from hskd.runs import fingerprint_settings, is_main_process, write_record


def run(s: Settings) -> dict:
    """The main job: teacher, student-finetune and distilled student, evaluated and reported."""
    if not s.output_dir:
        raise HskdError("give --output-dir")
    with OutputLock(s.output_dir) as lock:  # each stage locks its own sub-folder too
        return _run(s, lock)


def _run(s: Settings, lock: OutputLock) -> dict:
    from hskd.report import write_run_report

    out = Path(s.output_dir).expanduser()
    load_data(s)  # fail on bad data before anything is written
    fp = fingerprint_settings(s, "run")
    record = out / "run.json"
    if out.is_file():
        raise HskdError(f"--output-dir {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not record.exists():
        raise HskdError(f"{out} holds files that are not an hskd run; choose another --output-dir")
    if record.exists() and not s.overwrite and read_json(record, "pass --overwrite").get("settings") != fp:
        raise HskdError(f"{out} holds a different run; pass --overwrite to replace it, or choose another "
                        "--output-dir")
    main = is_main_process()
    if main:
        if s.overwrite and out.exists():
            shutil.rmtree(out)
        if not out.exists():
            lock.created()
        out.mkdir(parents=True, exist_ok=True)
        write_record(out, {"settings": fp, "status": "running"}, name="run.json")
        s.save(out / "config.yaml", environment=run_environment(s))
    child = dict(overwrite=False, resume=True)
    # MUD's point is a cache; knowledge no cache can hold (a batch-wide width) is distilled online
    cacheable = s.recipe == "mud" and not s.cache and _cacheable(s)
    start = time.perf_counter()
    teacher = train_job(with_changes(s, output_dir=str(out / "teacher"), recipe="finetune", **child), "finetune",
                         backbone=s.model, layers=None, learning_rate=s.learning_rate, reuse=True)
    baseline = train_job(with_changes(s, output_dir=str(out / "student-finetune"), recipe="finetune", **child),
                          "finetune", backbone=s.student_model, layers=parse_layers(s.student_layers),
                          learning_rate=s.student_learning_rate, reuse=True, hidden_size=s.student_hidden_size)
    student_s = with_changes(s, output_dir=str(out / "student"), teacher=str(out / "teacher"), **child)
    cache = None
    if cacheable:  # MUD's point: extract the HSK once, train without the teacher
        cache_dir = out / "cache"
        if not (cache_dir / "manifest.json").is_file():
            make_cache(with_changes(student_s, output_dir=str(cache_dir), overwrite=False))
        barrier()
        cache = CacheReader(cache_dir, verify=False).manifest
        student_s = with_changes(student_s, cache=str(cache_dir))
    student = train_job(student_s, "distill", backbone=s.student_model, layers=parse_layers(s.student_layers),
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


def _cacheable(s: Settings) -> bool:
    """Whether the knowledge of ``s`` can be cached, checked before any training (a bad
    ``--knowledge`` is refused here too)."""
    spec = cache_spec(s)
    try:
        refuse_uncacheable(spec)
    except HskdError:
        return False
    return True

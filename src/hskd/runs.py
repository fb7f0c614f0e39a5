"""Run folders and their records: what a job may write where, written safely.

Every file hskd writes goes through :func:`write_atomic` (a temporary name, then a rename), so
a crash leaves the old file or the new one, never half of one. Rank checks under ``torchrun``
go through :func:`is_main_process`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from hskd.config import Settings
from hskd.device import is_main_process  # noqa: F401 - re-exported
from hskd.errors import HskdError
from hskd.files import read_json, write_atomic, write_json  # noqa: F401 - re-exported
from hskd.locks import OutputLock
from hskd.recipes import is_recipe_file, load_recipe

RECORD = "hskd.json"
RUN_CONTROL = {"output_dir", "overwrite", "resume", "quiet", "callbacks", "cache", "device", "seeds",
               "push_to_hub", "hub_model_id",
               "dataloader_num_workers", "torch_compile", "plugin", "tolerance", "dry_run"}
# Settings that change the result but came later: left out of the fingerprint at their default,
# so that runs made before them are still recognised (reused, resumed).
LATER_DEFAULTS = {"bf16": False, "fp16": False, "gradient_accumulation_steps": 1, "preset": None, "kd_form": None,
                  "kd_reduction": None, "kd_temperature_scaling": None, "pkd_states": None,
                  "hidden_width_loss": None, "attention_kl_average": None, "rank_layer": None, "rank_by": None,
                  "hsk_padding": None, "hsk_lr_scheduler": None, "storage": None, "early_stopping_patience": None,
                  "stage_convergence": None}


# Later settings whose explicit default spelling must fingerprint as their absence.
DEFAULT_SPELLINGS = {"hsk_padding": "exclude", "stage_convergence": 0.0}  # 0: the test off, as None
# Later distillation-only settings, never part of a fine-tuning fingerprint (the earlier ones stay
# in it, so that teachers fingerprinted with them are still recognised).
NOT_FINETUNE = {"hsk_padding", "stage_convergence"}

COMMON = ("task", "data_dir", "train_file", "validation_file", "text_columns", "label_column", "labels",
          "task_type", "max_train_samples", "max_eval_samples", "max_seq_length", "num_train_epochs",
          "batch_size", "eval_batch_size", "warmup_ratio", "weight_decay", "seed", "max_steps", "save_steps",
          *LATER_DEFAULTS)


def fingerprint_settings(s: Settings, job: str, backbone=None, layers=None) -> dict:
    """The settings that define a job's result: a directory holding other settings holds a
    different run. Fine-tuning ignores distillation settings, so `run` can reuse a teacher."""
    data = {k: v for k, v in s.to_yaml_dict().items()
            if k not in LATER_DEFAULTS or v not in (LATER_DEFAULTS[k], DEFAULT_SPELLINGS.get(k, LATER_DEFAULTS[k]))}
    if job == "finetune":
        keep = {k: data[k] for k in COMMON if k in data and k not in NOT_FINETUNE}
        return {"job": job, "backbone": backbone, "layers": layers, "learning_rate": s.learning_rate, **keep}
    fp = {"job": job, **{k: v for k, v in data.items() if k not in RUN_CONTROL}}
    if job == "distill" and s.cache:  # what the cache holds, not where it is: --resume with another is refused
        fp["cache_sha256"] = cache_identity(s.cache)
    if s.recipe and is_recipe_file(s.recipe):  # a user's recipe: its content, not just its path
        fp["recipe_definition"] = load_recipe(s.recipe)
    return fp


def cache_identity(path: str) -> str | None:
    """A digest of a finished cache's manifest (its fingerprint and every array's sha256), or
    ``None`` when ``path`` holds no finished cache (the job then refuses it with the reason)."""
    manifest = Path(path).expanduser() / "manifest.json"
    if not manifest.is_file():
        return None
    m = read_json(manifest, "rebuild the cache with hskd cache --overwrite")
    if not isinstance(m, dict):
        return None  # not a manifest: the cache reader refuses it with the reason
    content = {"fingerprint": m.get("fingerprint"), "arrays": m.get("arrays")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def prepare_output(path: str | None, job: str, settings_fp: dict, s: Settings, reuse: bool = False) -> tuple[Path, str]:
    """Check the output directory before any work. Returns (path, state) with state one of
    ``new``, ``overwrite``, ``resume`` or ``complete`` (a finished identical run, with ``reuse``
    or --resume: it is read back, never retrained, even when its ``checkpoints/`` were deleted).

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
    info = read_json(record, "pass --overwrite to replace the run, or choose another --output-dir") \
        if record.is_file() else None
    if info is None:  # never delete or write into a folder that hskd did not make
        raise HskdError(f"{out} holds files that are not an hskd run; choose another --output-dir")
    same = info.get("settings") == settings_fp
    if s.overwrite:
        return out, "overwrite"
    if same and info.get("status") == "complete" and (reuse or s.resume):
        return out, "complete"
    if same and s.resume:
        return out, "resume"
    if not same:
        have = info.get("settings") or {}
        changed = sorted(k for k in set(have) | set(settings_fp) if have.get(k) != settings_fp.get(k))
        raise HskdError(f"{out} holds a different run (changed: {', '.join(changed[:8])}); pass --overwrite to "
                        "replace it, or choose another --output-dir (--resume continues only the same run)")
    what = "a finished run" if info.get("status") == "complete" else "an unfinished run"
    raise HskdError(f"{out} holds {what}; pass --resume to continue it or --overwrite to replace it, "
                    "or choose another --output-dir")


def start_output(out: Path, state: str, job: str, settings_fp: dict, s: Settings, environment: dict,
                 lock: OutputLock) -> None:
    """Create (or, for ``overwrite``, replace) the run folder and write its first record. Call
    it under ``lock``, which then owns a folder it created (see :class:`hskd.locks.OutputLock`)."""
    if not is_main_process():
        return
    if state == "overwrite":
        shutil.rmtree(out)
    if not out.exists():
        lock.created()
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, {"job": job, "status": "running", "settings": settings_fp})
    s.save(out / "config.yaml", environment=environment)


def write_record(out: Path, data: dict, name: str = RECORD) -> None:
    """Write a run's record (``hskd.json`` or ``run.json``) atomically."""
    write_json(out / name, data)


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

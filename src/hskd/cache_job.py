"""``hskd cache``: run the teacher once over the training set and store its selected knowledge
(:mod:`hskd.cache` does the writing)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hskd import models
from hskd.cache import partial_dir, refuse_uncacheable, write_cache
from hskd.config import Settings
from hskd.data import Collator, knowledge_pad_to, load_data, max_length, tokenize
from hskd.device import precision_dtype
from hskd.errors import HskdError
from hskd.job_inputs import cache_fingerprint, needs_eager, run_device, run_environment, student_depth
from hskd.locks import OutputLock
from hskd.recipes import knowledge_spec, recipe_spec
from hskd.runs import is_main_process
from hskd.storage import DEFAULT_STORAGE, check_storage


def command_line() -> str:
    """The command that is running, as a user would retype it."""
    import shlex
    import sys

    name = Path(sys.argv[0]).name
    prog = "hskd" if name in ("hskd", "cli.py", "__main__.py", "-c") else name
    return shlex.join([prog, *sys.argv[1:]])


def make_cache(s: Settings, stop_after_batches: int | None = None) -> dict:
    """Run the teacher once over the training set and store its selected knowledge; with
    ``--dry-run``, only plan it (:func:`hskd.planner.plan_cache`: nothing is written) and
    return the plan."""
    if not s.teacher:
        raise HskdError("give --teacher DIR (a fine-tuned model)")
    if not s.output_dir:
        raise HskdError("give --output-dir CACHE_DIR")
    spec = cache_spec(s)
    refuse_uncacheable(spec)  # before the planner too: --dry-run must not plan what cannot be written
    device = run_device(s)
    out = Path(s.output_dir).expanduser()
    if s.dry_run:
        from hskd.planner import plan_cache

        return plan_cache(s, prepare_cache_job(s, spec), device, out)
    with OutputLock(out):  # covers DIR and DIR.partial: a second process is refused, not adopted
        return _make_cache(s, spec, device, out, stop_after_batches)


def _make_cache(s: Settings, spec, device, out: Path, stop_after_batches: int | None) -> dict:
    if (out / "manifest.json").exists() and not s.overwrite:
        raise HskdError(f"{out} already holds a cache; pass --overwrite to rebuild it")
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise HskdError(f"{out} holds other files; choose another --output-dir")
    job = prepare_cache_job(s, spec)
    if s.overwrite and is_main_process():
        shutil.rmtree(partial_dir(out), ignore_errors=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")  # each rank writes a disjoint range of rows
    job.teacher.to(device=device, dtype=precision_dtype(s.bf16, s.fp16))
    collator = Collator(job.tokenizer, knowledge_pad_to(job.plan.spec, job.max_len))
    return write_cache(out, job.teacher, job.dataset, collator, job.plan, job.fingerprint,
                       job.tokenizer.sep_token_id, job.max_len, batch_size=s.eval_batch_size,
                       stop_after_batches=stop_after_batches, progress=not s.quiet,
                       environment=run_environment(s), storage=job.storage, command=command_line())


@dataclass
class CacheJob:
    """What a cache is extracted from, checked: the teacher (weights loaded, on the CPU), the
    tokenized training set, its tokenizer, max length, plan, fingerprint and storage."""

    teacher: object
    dataset: object
    tokenizer: object
    max_len: int
    plan: object
    fingerprint: dict
    storage: str


def prepare_cache_job(s: Settings, spec) -> CacheJob:
    """Load and check everything ``hskd cache`` needs, before anything is written (the
    planner, ``--dry-run``, stops here).

    Raises:
        HskdError: a teacher whose labels differ from the task's, too few position embeddings,
            an unknown storage.
    """
    storage = check_storage(s.storage or DEFAULT_STORAGE)
    teacher_path = models.resolve_model(s.teacher)
    teacher = models.load_classifier(teacher_path, None,  # its saved labels, checked below
                                     attentions=needs_eager(spec, teacher_path))
    data = load_data(s, labels_from_model=teacher)
    models.check_labels(teacher, data.task, "teacher")
    tok = models.load_tokenizer(teacher_path)
    max_len = max_length(s, data)
    models.check_positions(teacher.config, max_len, "teacher")
    n_student = student_depth(s)
    plan = spec.resolve(n_student, teacher.config.num_hidden_layers)
    fp = cache_fingerprint(data.task, data, tok, max_len, teacher_path)
    fp["spec"] = spec.to_dict()
    fp["student_layers"] = n_student
    fp["teacher"] = str(Path(teacher_path).resolve()) if Path(teacher_path).exists() else str(teacher_path)
    # the teacher's own label order (checked equal to the task's above): a distill from this
    # cache with another order is refused, whatever the teacher folder holds by then
    fp["teacher_labels"] = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)] \
        if not data.task.is_regression else None
    ds = tokenize(data.train, tok, max_len)
    return CacheJob(teacher, ds, tok, max_len, plan, fp, storage)


def cache_spec(s: Settings):
    """The spec a cache is built at: ``--knowledge`` (budget or mapping) or the recipe's."""
    if s.knowledge and s.recipe not in ("ird",):
        return knowledge_spec(s)
    spec = recipe_spec(s.recipe, s)
    if spec is None:
        raise HskdError("nothing to cache for recipe finetune; give --knowledge or another --recipe")
    return spec

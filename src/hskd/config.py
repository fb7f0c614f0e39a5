"""Settings: one flat record of every option, from defaults, a YAML file and flags.

Precedence: flags > ``--config FILE.yaml`` > recipe defaults > the defaults below. The
resolved settings are saved with every run (``config.yaml``): the YAML is the experiment record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hskd.errors import HskdError


@dataclass
class Settings:
    """Every option of every command. Names are the flags with ``_`` for ``-``."""

    # task and data
    task: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: str | None = None
    label_column: str | None = None
    labels: str | None = None
    task_type: str = "classification"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int | None = None
    # models
    model: str | None = None  # backbone to fine-tune (the teacher in `run`)
    layers: str | None = None  # fine-tune only these layers of `model`
    teacher: str | None = None
    student_model: str | None = None  # student backbone (default: the default backbone)
    student_layers: str | None = "3"
    student_hidden_size: int | None = None
    # recipe
    recipe: str = "tinybert"
    alpha: float | None = None
    temperature: float | None = None
    beta: float | None = None
    knowledge: Any = None  # MUD budget string or a KnowledgeSpec mapping
    depth_strategy: str | None = None
    length_strategy: str | None = None
    width_strategy: str | None = None
    t_top: int | None = None
    width_seed: int = 0
    hsk_epochs: float = 3.0
    hsk_learning_rate: float | None = None
    ird_schedule: str | None = None
    stage_epochs: float = 1.0
    cache: str | None = None
    # optimisation
    num_train_epochs: float = 3.0
    learning_rate: float = 5e-5
    student_learning_rate: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    max_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int = 50
    # device and precision
    device: str | None = None  # None: the accelerator when there is one, else the CPU
    bf16: bool = False
    fp16: bool = False
    gradient_accumulation_steps: int = 1
    dataloader_num_workers: int | None = None  # None: 2 on CUDA, 0 elsewhere
    torch_compile: bool = False
    # run control
    output_dir: str | None = None
    overwrite: bool = False
    resume: bool = False
    quiet: bool = False
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
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(head + yaml.safe_dump(self.to_yaml_dict(), sort_keys=False))
        tmp.replace(path)


SETTING_NAMES = {f.name for f in fields(Settings)} - {"callbacks"}


def load_yaml(path: str) -> dict:
    """Read a YAML config; keys may use ``-`` or ``_``.

    Raises:
        HskdError: a missing or malformed file, or an unknown key.
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
    unknown = set(data) - SETTING_NAMES
    if unknown:
        raise HskdError(f"{p}: unknown option(s) {', '.join(sorted(unknown))}; see hskd COMMAND --help")
    return data


def resolve(flags: dict, config_file: str | None = None, recipe_defaults: dict | None = None) -> Settings:
    """Merge defaults, recipe defaults, the YAML file and explicit flags (``None`` = unset)."""
    merged: dict = {}
    file_values = load_yaml(config_file) if config_file else {}
    recipe = flags.get("recipe") or file_values.get("recipe") or Settings.recipe
    if recipe_defaults:
        merged.update(recipe_defaults.get(recipe, {}))
    merged.update(file_values)
    merged.update({k: v for k, v in flags.items() if v is not None and k in SETTING_NAMES})
    settings = Settings(**merged)
    for name in ("alpha", "temperature", "beta"):
        if getattr(settings, name) is None:
            setattr(settings, name, {"alpha": 0.5, "temperature": 4.0, "beta": 1.0}[name])
    return settings

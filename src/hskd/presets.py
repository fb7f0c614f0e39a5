"""Paper presets: ``--preset mud|pkd|tinybert|ird`` sets the loss details and hyper-parameters
as each paper's official code does (for Aguilar et al., who released no code, as the paper's
text says). A preset is a bundle of ordinary settings: every departure it sets is also a named
option (``--kd-form``, ``--pkd-states``, ...), and flags still win over it. docs/METHODS.md
lists each departure with its source and hskd's default.

Precedence: flags > ``--config`` > preset > recipe defaults > defaults.
"""

from __future__ import annotations

from hskd.errors import HskdError

# MUD's scripts train the HSK stage for a number of epochs that depends on the task
# (llyx97/Marginal-Utility-Diminishes, the run scripts of the HSK stage).
_MUD_HSK_EPOCHS = {"CoLA": 30, "MRPC": 20, "SST-2": 10, "STS-B": 20, "RTE": 20, "MNLI": 5, "QQP": 5, "QNLI": 5}

PRESETS: dict[str, dict] = {
    "mud": {
        "source": "llyx97/Marginal-Utility-Diminishes (Liu et al. 2021): HSK stage, then prediction stage",
        "recipes": {"mud": "mud"},
        # the official selectors behind hskd's width strategy names
        "width_strategies": {"uniform": "uniform-stride", "random": "random-bernoulli",
                             "magnitude": "magnitude-batch"},
        "settings": {
            # HSK stage: constant lr 5e-5, per-task epochs; whole vectors with unkept dims zeroed
            "hsk_learning_rate": 5e-5, "hsk_lr_scheduler": "constant", "hsk_epochs": _MUD_HSK_EPOCHS,
            "hidden_width_loss": "zeroed",
            # attention length: pre-softmax [CLS] scores of the layer the T_top = 12 map gives (att_ttop12)
            "rank_layer": "full-depth", "rank_by": "scores",
            # static padding to the max length; padding positions selectable and counted in the MSE
            "hsk_padding": "include",
            # prediction stage: lr 2e-5, 5 epochs, soft cross-entropy at T = 1 over batch x classes, no T²,
            # evaluated every 50 steps; STS-B trains on the gold score (MSE) instead
            "student_learning_rate": 2e-5, "num_train_epochs": 5.0, "warmup_ratio": 0.0, "temperature": 1.0,
            "alpha": {"STS-B": 0.0, None: 1.0}, "batch_size": 32,
            "kd_form": "soft_ce", "kd_reduction": "mean", "kd_temperature_scaling": "none", "save_steps": 50,
        },
    },
    "pkd": {
        "source": "intersun/PKD-for-BERT-Model-Compression (Sun et al. 2019): the kd.cls configuration of "
                  "src/argument_parser.py, src/KD_loss.py",
        "recipes": {"pkd-skip": "pkd-skip", "pkd-last": "pkd-last", "kd": "kd"},
        "settings": {
            "student_learning_rate": 1e-5, "beta": 500.0, "alpha": 0.7, "temperature": 10.0,
            "num_train_epochs": 4.0, "max_seq_length": 128, "batch_size": 32,
            # KLDivLoss with reduction 'mean' (KD_loss.py's default): divided by batch x classes, times T²
            "kd_reduction": "mean",
            # kd.cls normalises the patience states; the parser's default (normalize_patience=False)
            # is --pkd-states raw, and run_student_patience.py's grid tries both
            "pkd_states": "normalized",
            # not set: NLI_KD_training.py's SequentialSampler (the same order every epoch, a bug);
            # --train_sampling_strategy sequential, the Trainer's own argument, asks for it
        },
    },
    "tinybert": {
        "source": "huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py (Jiao et al. 2020)",
        "recipes": {"tinybert": "tinybert-2stage", "tinybert-2stage": "tinybert-2stage"},
        "settings": {
            # intermediate-layer stage (no --pred_distill): constant lr 5e-5, 10 epochs (the README)
            "hsk_learning_rate": 5e-5, "hsk_epochs": 10.0, "hsk_lr_scheduler": "constant",
            # static padding to max_seq_length; MSELoss over every position, padding included
            "hsk_padding": "include",
            # prediction stage: lr 3e-5, 3 epochs, soft cross-entropy at T = 1 over batch x classes, no T²;
            # regression (STS-B) on the gold score
            "student_learning_rate": 3e-5, "num_train_epochs": 3.0, "temperature": 1.0,
            "alpha": {"STS-B": 0.0, None: 1.0},
            "kd_form": "soft_ce", "kd_reduction": "mean", "kd_temperature_scaling": "none",
        },
    },
    "ird": {
        "source": "Aguilar et al. 2020 (AAAI), the paper's text (no code was released)",
        "recipes": {"ird": "ird"},
        # the text gives the losses (KL on attentions, 1 - cos on [CLS]) and the schedules, which the
        # ird recipe follows, and trains each internal stage until its loss converges; it states no
        # reduction and no numbers for that, so the tolerance (1 % an epoch) and the cap (10
        # epochs a stage) are hskd's
        "settings": {"stage_convergence": 0.01, "stage_epochs": 10.0},
    },
}


def preset_recipe(preset: str, recipe: str | None) -> str:
    """The recipe a preset trains for ``recipe`` (TinyBERT's: its two-stage form); with no
    recipe given, the preset's first.

    Raises:
        HskdError: an unknown preset, or a recipe the preset does not describe.
    """
    if preset not in PRESETS:
        raise HskdError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    mapping = PRESETS[preset]["recipes"]
    if recipe is None:
        return next(iter(mapping.values()))
    if recipe not in mapping:
        raise HskdError(f"--preset {preset} describes recipe(s) {', '.join(mapping)}, not {recipe!r}; "
                        f"give --recipe {next(iter(mapping))}")
    return mapping[recipe]


def preset_width(preset: str | None, width: str) -> str:
    """The width strategy a preset uses for hskd's ``width`` name (MUD's own uniform and
    random selectors under ``--preset mud``)."""
    return PRESETS.get(preset or "", {}).get("width_strategies", {}).get(width, width)


def preset_settings(preset: str, recipe: str, task: str | None) -> dict:
    """The settings ``preset`` sets; a per-task value (a mapping by task name, ``None`` for the
    others) is taken for ``task``."""
    preset_recipe(preset, recipe)
    values = {}
    for name, value in PRESETS[preset]["settings"].items():
        if isinstance(value, dict):
            if task not in value and None not in value:
                continue
            value = value.get(task, value.get(None))
        values[name] = value
    return values

"""Train a stage "to convergence": stop it once an epoch no longer lowers its training loss.

Aguilar et al. (AAAI 2020, Sec. 4) train each internal stage of their progressive and stacked
schedules until its loss converges, not for a fixed number of epochs. A stage without a dev
metric of its own (IRD's internal stages, MUD's HSK stage, TinyBERT's intermediate stage) has
only its training loss to tell; ``--stage-convergence TOL`` stops it after the first epoch whose
mean logged loss is less than ``TOL`` (relative) below the epoch before, with the stage's epochs
as the upper bound.

The per-epoch means are recomputed from ``TrainerState.log_history`` at every epoch's end, which
a checkpoint restores, so a resumed stage stops where an uninterrupted one would.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback


def epoch_mean_losses(log_history: list[dict]) -> dict[int, float]:
    """The mean of the logged training losses of each epoch, by 0-based epoch index.

    A log at fractional epoch ``e`` belongs to epoch ``ceil(e) - 1`` (a log at exactly 1.0 closes
    epoch 0). Entries without a ``loss`` (evaluations, the final summary) are ignored; an epoch
    with no training log is absent.
    """
    sums: dict[int, list[float]] = {}
    for entry in log_history:
        if "loss" not in entry or "epoch" not in entry:
            continue
        index = max(math.ceil(float(entry["epoch"]) - 1e-9) - 1, 0)
        sums.setdefault(index, []).append(float(entry["loss"]))
    return {i: sum(v) / len(v) for i, v in sorted(sums.items())}


def has_converged(previous: float, current: float, tolerance: float) -> bool:
    """True when ``current`` is less than ``tolerance`` (a fraction, e.g. 0.01) below ``previous``:
    ``(previous - current) / |previous| < tolerance``; a rising loss has converged too."""
    if previous == 0:
        return True
    return (previous - current) / abs(previous) < tolerance


class StageConvergence(TrainerCallback):
    """Stops training at the end of an epoch whose mean training loss is less than
    ``tolerance`` (relative) below the previous epoch's. Needs at least one training log per
    epoch (``--logging-steps`` below the steps of an epoch); an epoch without one never stops
    the stage."""

    def __init__(self, tolerance: float):
        if not tolerance > 0:
            raise ValueError(f"tolerance must be above 0, got {tolerance}")
        self.tolerance = tolerance

    def on_epoch_end(self, args, state, control, **kwargs):
        means = epoch_mean_losses(state.log_history)
        done = round(state.epoch or 0) - 1  # the epoch that just ended
        if done - 1 in means and done in means and has_converged(means[done - 1], means[done], self.tolerance):
            control.should_training_stop = True
        return control

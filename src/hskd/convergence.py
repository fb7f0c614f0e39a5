"""Train a stage "to convergence": stop it once an epoch no longer lowers its training loss.

Aguilar et al. (AAAI 2020, Sec. 4) train each internal stage of their progressive and stacked
schedules until its loss converges, not for a fixed number of epochs. A stage without a dev
metric of its own (IRD's internal stages, MUD's HSK stage, MiniLM's relation stage, TinyBERT's
intermediate stage) has only its training loss to tell; ``--stage-convergence TOL`` stops it
after the first epoch whose mean training loss is less than ``TOL`` (relative) below the epoch
before, the stage's epochs being the upper bound.

The per-epoch means come from ``TrainerState.log_history``, which a checkpoint restores, and
every epoch ends with a log of its own, so no log window spans two epochs. A stage resumed from
a checkpoint at an epoch's end makes the decision an uninterrupted one made (``run_stage`` asks
:func:`converged` of the checkpoint first); from a mid-epoch checkpoint (``--save-steps``) the
steps between its last log and the checkpoint are not in that epoch's mean.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback


def epoch_index(epoch: float) -> int:
    """The 0-based epoch a point of training at fractional ``epoch`` belongs to: ``ceil(e) - 1``
    (exactly 1.0 is the end of epoch 0)."""
    return max(math.ceil(float(epoch) - 1e-9) - 1, 0)


def epoch_mean_losses(log_history: list[dict]) -> dict[int, float]:
    """The mean training loss of each epoch, by 0-based epoch index, each log weighted by the
    optimizer steps it covers (its ``step`` less the previous log's).

    Entries without a ``loss`` (evaluations, the final summary) are ignored; an epoch with no
    training log is absent.
    """
    totals: dict[int, list[float]] = {}
    previous = 0
    for entry in log_history:
        if "loss" not in entry or "epoch" not in entry:
            continue
        step = int(entry.get("step", previous + 1))
        weight = max(step - previous, 1)
        previous = step
        total = totals.setdefault(epoch_index(entry["epoch"]), [0.0, 0.0])
        total[0] += weight * float(entry["loss"])
        total[1] += weight
    return {i: s / w for i, (s, w) in sorted(totals.items())}


def has_converged(previous: float, current: float, tolerance: float) -> bool:
    """True when ``current`` is less than ``tolerance`` (a fraction, e.g. 0.01) below ``previous``:
    ``(previous - current) / |previous| < tolerance``; a rising loss has converged too."""
    if previous == 0:
        return True
    return (previous - current) / abs(previous) < tolerance


def converged(log_history: list[dict], epochs_done: int, tolerance: float) -> bool:
    """Whether the stage stops after ``epochs_done`` complete epochs: the last of them lowered the
    mean loss of the one before by less than ``tolerance``. False with fewer than two epochs
    logged."""
    means = epoch_mean_losses(log_history)
    last = epochs_done - 1
    return last - 1 in means and last in means and has_converged(means[last - 1], means[last], tolerance)


class StageConvergence(TrainerCallback):
    """Logs at every epoch's end and stops training at the end of an epoch whose mean training
    loss is less than ``tolerance`` (relative) below the previous epoch's.

    Raises:
        ValueError: ``tolerance`` is not above 0.
    """

    def __init__(self, tolerance: float):
        if not tolerance > 0:
            raise ValueError(f"tolerance must be above 0, got {tolerance}")
        self.tolerance = tolerance

    def on_step_end(self, args, state, control, **kwargs):
        if state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-9:
            control.should_log = True  # the epoch's last window ends with the epoch
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        done = epoch_index(state.epoch or 0) + 1  # complete epochs, the one that just ended included
        if converged(state.log_history, done, self.tolerance):
            control.should_training_stop = True
        return control

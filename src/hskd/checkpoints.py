"""Trainer checkpoints that are complete or absent: each is written under a temporary name and
renamed once every file (weights, optimizer, scheduler, RNG, trainer state) is there, so a kill
during a save leaves no ``checkpoint-N`` that ``--resume`` would trip over."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

STAGING = ".saving"  # a folder of the stage dir where a checkpoint is written before its rename
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it is incomplete


class AtomicCheckpoints(Trainer):
    """A ``Trainer`` whose ``checkpoint-N`` folders appear whole: written in ``.saving/``,
    then renamed into place (on the main process, once every rank has written its part)."""

    _staging: Path | None = None

    def _get_output_dir(self, trial):
        if self._staging is not None:
            return str(self._staging)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging = run_dir / STAGING
        try:
            super()._save_checkpoint(model, trial)
        finally:
            staging, self._staging = self._staging, None
        final = run_dir / name
        if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint).parent == staging:
            # the best model is the one just saved: name it where it will live
            self.state.best_model_checkpoint = str(final)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.state.save_to_json(str(staging / name / STATE_FILE))  # with the final path in it
            if final.exists():  # a step saved twice (resumed at it): the new one replaces it
                shutil.rmtree(final)
            os.replace(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def last_complete_checkpoint(stage_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` of ``stage_dir`` that holds a trainer state, or ``None``.

    Incomplete ones (from a kill during a save by an older hskd, or a hand-deleted file) and a
    leftover ``.saving`` folder are reported on stderr and removed: they cannot be resumed from,
    and the Trainer would otherwise pick the newest by number.
    """
    stage_dir = Path(stage_dir)
    staging = stage_dir / STAGING
    if staging.exists():
        print(f"hskd: note: removed {staging}, a checkpoint whose save was interrupted", file=sys.stderr)
        shutil.rmtree(staging, ignore_errors=True)
    found = []
    for path in stage_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        if (path / STATE_FILE).is_file() and any(path.glob("model*.safetensors")):
            return path
        print(f"hskd: note: skipped and removed {path}, an incomplete checkpoint", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)
    return None

"""Write the student as it stood at the end of one stage of a finished hskd run, as a Hugging
Face model directory, so that a later stage can be rerun on its own with other settings.

Used for an ablation in docs/RESULTS.md: TinyBERT's prediction stage at another learning rate,
started from the intermediate stage that ``--preset tinybert`` trained (10 epochs, the costly
part), without training that stage again. The run's ``checkpoints/NN-stage/final.safetensors``
holds the whole distillation wrapper; the student's tensors are those under ``student.``.

    python bench/stage_student.py RUN_DIR intermediate OUT_DIR
    hskd distill ... --recipe kd --student-model OUT_DIR ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel


def load_stage_student(run_dir: Path, stage: str) -> tuple[PreTrainedModel, Path]:
    """The student of ``run_dir`` as stage ``stage`` (its name, e.g. ``intermediate``, ``hsk``)
    left it: the run's model class and config with that stage's ``final.safetensors`` loaded.
    Returns ``(model, checkpoint path)``; the model is in eval mode, as ``from_pretrained`` gives it.

    Raises:
        SystemExit: the run has no finished stage of that name, or the checkpoint does not fit.
    """
    finals = sorted((run_dir / "checkpoints").glob(f"[0-9][0-9]-{stage}/final.safetensors"))
    if not finals:
        raise SystemExit(f"{run_dir} has no finished stage {stage!r}: see {run_dir / 'checkpoints'}")
    state = {k.removeprefix("student."): v for k, v in load_file(finals[0]).items() if k.startswith("student.")}
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(run_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # the exported run ties no weights that the checkpoint lacks; anything else is a wrong run
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise SystemExit(f"{finals[0]} does not fit the run's config: missing {missing}, unexpected {unexpected}")
    return model.eval(), finals[0]


def stage_student(run_dir: Path, stage: str, out_dir: Path) -> Path:
    """Save the student of ``run_dir`` after stage ``stage`` into ``out_dir`` with the run's
    tokenizer; returns the checkpoint it read (errors: :func:`load_stage_student`)."""
    model, checkpoint = load_stage_student(run_dir, stage)
    out_dir.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(out_dir)
    return checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished hskd distill run (one seed's folder)")
    p.add_argument("stage", help="the stage's name, e.g. intermediate, hsk, internal")
    p.add_argument("out_dir", type=Path, help="a new folder for the Hugging Face model")
    a = p.parse_args()
    print(f"{stage_student(a.run_dir, a.stage, a.out_dir)} -> {a.out_dir}")


if __name__ == "__main__":
    main()

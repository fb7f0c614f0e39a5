"""``--seeds 42,43,44``: one job per seed, and the spread of its dev metric.

Each seed trains into ``OUT/seed-N`` (a run of its own: on a rerun a finished one is read back
untouched, an unfinished one resumed), and ``OUT/seeds.json`` and ``OUT/seeds.md`` give every
seed's dev metrics with their mean and sample standard deviation, so that a difference between
two methods can be judged against the noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from hskd.config import Settings
from hskd.errors import HskdError
from hskd.files import read_json, write_atomic, write_json
from hskd.job_inputs import with_changes
from hskd.locks import OutputLock


def parse_seeds(text: str) -> list[int]:
    """``"42,43,44"`` -> [42, 43, 44].

    Raises:
        HskdError: not a comma-separated list of distinct non-negative integers.
    """
    try:
        seeds = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        raise HskdError(f"bad --seeds {text!r}: give distinct non-negative integers, e.g. 42,43,44")
    return seeds


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def run_seeds(s: Settings, job, models: tuple[str, ...] | None = None) -> dict:
    """Run ``job`` (``finetune`` or ``distill``; ``run`` with ``models``) once per seed of
    ``s.seeds``.

    Args:
        models: for ``hskd run``: the sub-folders of each seed's run whose records are summarised
            (teacher, student-finetune, student); each seed trains all of them with that seed.

    Returns: ``{"seeds": [...], "runs": {seed: eval}, "metrics": {name: {"mean", "std", "values"}}}``;
    with ``models``, ``{"models": {name: that summary}}``.
    """
    seeds = parse_seeds(s.seeds)
    if not s.output_dir:
        raise HskdError("give --output-dir")
    out = Path(s.output_dir).expanduser()
    with OutputLock(out) as lock:
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith("seed-") and p.name != "seeds.json"
                                and p.name != "seeds.md"):
            raise HskdError(f"{out} holds files that are not a --seeds run; choose another --output-dir")
        if not out.exists():
            lock.created()
        out.mkdir(parents=True, exist_ok=True)
        runs: dict = {}
        for seed in seeds:
            child = with_changes(s, seed=seed, seeds=None, output_dir=str(out / f"seed-{seed}"),
                                 resume=not s.overwrite)
            # resume: a finished seed is read back untouched (even with its checkpoints/ deleted),
            # an interrupted one goes on from its last checkpoint
            record = job(child)
            if models is None:
                runs[seed] = record["eval"]
            else:  # hskd run: each model's record in its sub-folder
                for name in models:
                    runs.setdefault(name, {})[seed] = read_json(out / f"seed-{seed}" / name / "hskd.json",
                                                                "rerun with --overwrite")["eval"]
        if models is None:
            summary = summarise(runs)
            text = seeds_table(summary)
        else:
            summary = {"seeds": seeds, "models": {name: summarise(r) for name, r in runs.items()}}
            text = "\n\n".join(f"### {name}\n\n{seeds_table(m)}" for name, m in summary["models"].items())
        write_json(out / "seeds.json", summary)
        write_atomic(out / "seeds.md", text + "\n")
        return summary


def summarise(runs: dict[int, dict]) -> dict:
    """Every dev metric of every seed, with mean and sample std."""
    metrics: dict[str, list[float]] = {}
    for ev in runs.values():
        for split, values in ev["dev"].items():
            for name, value in values.items():
                metrics.setdefault(f"{split}/{name}" if len(ev["dev"]) > 1 else name, []).append(float(value))
    first = next(iter(runs.values()))
    return {"seeds": list(runs), "main_metric": first["main_metric"],
            "runs": {str(seed): ev["dev"] for seed, ev in runs.items()},
            "metrics": {name: dict(zip(("mean", "std"), mean_std(v)), values=v) for name, v in metrics.items()}}


def seeds_table(summary: dict) -> str:
    """A markdown table: one row per metric, mean ± std (×100) and each seed's value."""
    seeds = summary["seeds"]
    lines = ["| metric | mean ± std | " + " | ".join(f"seed {x}" for x in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for name, m in summary["metrics"].items():
        spread = f" ± {m['std'] * 100:.2f}" if m["std"] is not None else ""
        lines.append(f"| {name} | {m['mean'] * 100:.2f}{spread} | " + " | ".join(f"{v * 100:.2f}" for v in m["values"])
                     + " |")
    return "\n".join(lines)

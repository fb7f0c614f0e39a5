"""The marginal-utility sweep (MUD, Liu et al. 2021, Fig. 2-4): one cache at the largest budget,
one student per grid point trained from slices of it, and the dev metric against the fraction
of HSK, one panel per dimension (depth, length, width) and one for joint compression."""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from hskd.cache import CacheReader
from hskd.config import Settings
from hskd.errors import HskdError
from hskd.knowledge import KnowledgeSpec
from hskd.locks import OutputLock
from hskd.report import plot_marginal_utility
from hskd.runs import write_atomic, write_json

# value: the dev metric (the mean over the seeds with --seeds); std: its sample std (empty for one
# seed); values: each seed's, in the order of seeds
FIELDS = ["panel", "point", "layers", "tokens", "width", "hsk_fraction", "cache_bytes", "metric", "value",
          "train_seconds", "train_examples_per_second", "std", "seeds", "values"]


@dataclass(frozen=True)
class Point:
    panel: str
    layers: int
    tokens: int | None  # None: all tokens
    width: float

    @property
    def name(self) -> str:
        return f"{self.layers}l_{self.tokens if self.tokens else 'all'}t_{self.width:g}h"


def _values(text: str, kind) -> list:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            out.append(None if part == "all" else kind(part))
        except ValueError:
            raise HskdError(f"bad sweep value {part!r}: give numbers separated by commas (or 'all')") from None
    return out


def grid(depth: str, length: str, width: str, n_student: int, full: bool = False) -> list[Point]:
    """Grid points. By default: each dimension compressed alone (the others full), then joint
    compression along the three lists together (the i-th values of each, the last repeated);
    ``full`` gives the whole cross product as joint points.

    Raises:
        HskdError: a depth beyond the student's layers + 1, or a width outside (0, 1].
    """
    depths = [n_student + 1 if d is None else d for d in _values(depth, int)]
    lengths = _values(length, int)
    widths = [1.0 if w is None else w for w in _values(width, float)]
    if any(t is not None and t < 1 for t in lengths):
        raise HskdError("--length values must be token counts of at least 1 (or 'all')")
    if any(d < 1 or d > n_student + 1 for d in depths):
        raise HskdError(f"--depth values must be in 1..{n_student + 1} for a {n_student}-layer student")
    if any(not 0 < w <= 1 for w in widths):
        raise HskdError("--width values must be fractions in (0, 1]")
    top = n_student + 1
    points = [Point("depth", d, None, 1.0) for d in depths]
    points += [Point("length", top, t, 1.0) for t in lengths]
    points += [Point("width", top, None, w) for w in widths]
    if full:
        points += [Point("joint", d, t, w) for d in depths for t in lengths for w in widths]
    else:
        n = max(len(depths), len(lengths), len(widths))
        pick = lambda xs, i: xs[min(i, len(xs) - 1)]  # noqa: E731
        points += [Point("joint", pick(sorted(depths), i), pick(sorted(lengths, key=lambda t: t or 10**9), i),
                         pick(sorted(widths), i)) for i in range(n)]
    seen, unique = set(), []
    for p in points:
        if (p.panel, p.name) not in seen:
            seen.add((p.panel, p.name))
            unique.append(p)
    return unique


def point_spec(p: Point, s: Settings, max_len: int) -> KnowledgeSpec:
    """The spec of one grid point: its budget with the strategy flags (a preset's included, and
    ``--preset mud``'s own width selectors)."""
    from hskd.presets import preset_width

    length = s.length_strategy or "attention"
    # "all tokens" with a ranked or positional strategy is its first max_len tokens, which the
    # cache at the largest budget holds; with strategy "all", token counts are not a budget
    return KnowledgeSpec(logits=True, hidden=True, depth=s.depth_strategy or "uniform", layers=p.layers,
                         t_top=s.t_top, length=length,
                         tokens=None if length == "all" else (p.tokens or max_len),
                         width=preset_width(s.preset, s.width_strategy or "uniform") if p.width < 1 else "all",
                         width_fraction=p.width, seed=s.width_seed, rank_layer=s.rank_layer or "mapped",
                         rank_by=s.rank_by or "probs", padding=s.hsk_padding or "exclude")


def train_lengths(s: Settings, data, max_len: int, reader: CacheReader):
    """Real tokens of each training row ``[rows]`` as the cache's teacher tokenizes them, for
    :meth:`CacheReader.hsk_fraction`; ``None`` when the cache stores no padding slots
    (``--hsk-padding exclude``), where they are not needed."""
    if reader.spec.padding != "include":
        return None
    from hskd import models
    from hskd.data import tokenize

    tokenizer = models.load_tokenizer(models.resolve_model(s.teacher))
    return tokenize(data.train, tokenizer, max_len)["length"]


def student_args(s: Settings) -> dict:
    """The student keywords of :func:`pipeline.train_job` for a sweep or search point: its backbone,
    layers, hidden size and learning rate; finished runs reused."""
    from hskd import pipeline

    return dict(backbone=s.student_model, layers=pipeline.parse_layers(s.student_layers),
                learning_rate=s.student_learning_rate, reuse=True, hidden_size=s.student_hidden_size)


def train_seeds(s: Settings, job: str, out: Path, seeds: list[int] | None, **kw) -> list[dict]:
    """Train ``job`` into ``out`` (``seeds`` None: the single-seed layout, at ``s.seed``) or into
    ``out/seed-N`` once per seed; finished runs are read back, not retrained. Returns the records."""
    from hskd import pipeline

    if not seeds:
        return [pipeline.train_job(pipeline.with_changes(s, output_dir=str(out), resume=True), job, **kw)]
    return [pipeline.train_job(pipeline.with_changes(s, output_dir=str(out / f"seed-{seed}"), seed=seed, seeds=None,
                                                     resume=True), job, **kw) for seed in seeds]


def run_sweep(s: Settings, depth: str, length: str, width: str, full_grid: bool = False) -> list[dict]:
    """Extract one cache at the largest budget, train a student per point (per point and seed
    with ``s.seeds``, into ``points/NAME/seed-N``), write ``results.csv`` (the mean and sample
    std over the seeds) and ``marginal_utility.png`` (with ± std bars). Finished points are kept
    and skipped.

    Raises:
        HskdError: no ``--teacher`` or ``--output-dir``, a bad grid or bad ``--seeds``.
    """
    from hskd.seeds import parse_seeds

    if not s.teacher or not s.output_dir:
        raise HskdError("hskd sweep needs --teacher DIR and --output-dir DIR")
    if (s.length_strategy or "attention") in ("cls", "all") and length.strip() not in ("all", "1"):
        raise HskdError("--length-strategy cls/all cannot vary the token count; use left or attention")
    seeds = parse_seeds(s.seeds) if s.seeds else None
    with OutputLock(s.output_dir) as lock:  # the cache and every point lock their own folders too
        return _run_sweep(s, depth, length, width, full_grid, seeds, lock)


def _run_sweep(s: Settings, depth: str, length: str, width: str, full_grid: bool, seeds: list[int] | None,
               lock: OutputLock) -> list[dict]:
    from hskd import pipeline
    from hskd.seeds import mean_std

    out = Path(s.output_dir).expanduser()
    n_student = pipeline.student_depth(s)
    points = grid(depth, length, width, n_student, full_grid)
    data = pipeline.load_data(s)
    max_len = pipeline.max_length(s, data)
    largest = max(p.layers for p in points)
    length_strategy = s.length_strategy or "attention"
    big = KnowledgeSpec(logits=True, hidden=True, depth=s.depth_strategy or "uniform", layers=largest, t_top=s.t_top,
                        length=length_strategy, tokens=max_len if length_strategy != "all" else None, width="all",
                        rank_layer=s.rank_layer or "mapped", rank_by=s.rank_by or "probs",
                        padding=s.hsk_padding or "exclude")
    cache_dir = out / "cache"
    if not out.exists():
        lock.created()
    out.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "manifest.json").exists():
        pipeline.make_cache(pipeline.with_changes(s, output_dir=str(cache_dir), knowledge=big.to_dict(), overwrite=False))
    reader = CacheReader(cache_dir)
    lengths = train_lengths(s, data, max_len, reader)
    student = student_args(s)
    baselines = train_seeds(pipeline.with_changes(s, recipe="finetune"), "finetune", out / "student-finetune", seeds,
                            **student)
    teacher_record = json.loads((Path(s.teacher) / pipeline.RECORD).read_text()) \
        if (Path(s.teacher) / pipeline.RECORD).exists() else None
    teacher_eval = teacher_record["eval"] if teacher_record else pipeline.evaluate(s, s.teacher)
    rows = []
    for p in points:
        spec = point_spec(p, s, max_len)
        plan = spec.resolve(n_student, reader.manifest["teacher_layers"])
        child = pipeline.with_changes(s, cache=str(cache_dir), knowledge=spec.to_dict(), recipe=s.recipe or "mud")
        records = train_seeds(child, "distill", out / "points" / p.name, seeds, **student)
        values = [r["eval"]["main_value"] for r in records]
        mean, std = mean_std(values)
        fraction = reader.hsk_fraction(plan, lengths)
        rows.append({"panel": p.panel, "point": p.name, "layers": p.layers, "tokens": p.tokens or "all",
                     "width": p.width, "hsk_fraction": fraction,
                     "cache_bytes": int(round(fraction * reader.manifest["full_hsk_bytes"])),
                     "metric": records[0]["eval"]["main_metric"], "value": mean,
                     "train_seconds": statistics.fmean(r["train_seconds"] for r in records),
                     "train_examples_per_second": statistics.fmean(r["train_examples_per_second"] or 0.0
                                                                   for r in records),
                     "std": "" if std is None else std, "seeds": " ".join(str(x) for x in seeds or [s.seed]),
                     "values": " ".join(f"{v:.6g}" for v in values)})
        _write_csv(out / "results.csv", rows)
    refs = {"teacher": teacher_eval["main_value"],
            "student-finetune": statistics.fmean(b["eval"]["main_value"] for b in baselines)}
    subset = f" (first {s.max_train_samples:,} training rows)" if s.max_train_samples else ""
    over = f", mean ± std of {len(seeds)} seeds" if seeds and len(seeds) > 1 else ""
    title = f"{data.task.name}{subset}: dev {rows[0]['metric']} vs HSK{over}"
    plot_marginal_utility(rows, refs, out / "marginal_utility.png", title=title)
    write_json(out / "references.json", refs)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())

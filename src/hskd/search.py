"""``hskd search``: the smallest HSK budget whose dev metric stays within ``--tolerance`` of
full HSK (MUD's "minimum knowledge"), from one cache, over several seeds.

How it searches, and why: MUD's curves (Liu et al. 2021, Fig. 2-4) rise with the budget along
each dimension and then flatten. Under that assumption (monotone along an axis), the smallest
passing value of an axis is found by **binary search** over its ladder of values, the other two
axes at full: about log₂(n) points instead of n. Then **jointly**: the three per-axis minima
together; if that falls short (the dimensions interact), each axis in turn is raised one rung
and the cheapest candidate that passes is taken, repeating from the best candidate until one
passes (full HSK always does). Successive halving was not chosen: it trains every budget a
little, and short runs of distillation rank budgets by how fast they learn, not where they end.

A budget *passes* when the mean gap to full HSK over the seeds, ``full − mean``, is at most the
tolerance, or is within noise: at most 2 standard errors of the difference (Welch), so that a
point is never ruled out by a difference the seeds cannot tell apart from zero. Every point is
reported with mean ± std, the gap, the standard error and whether the decision rested on noise.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hskd.errors import HskdError
from hskd.sweep import Point, _values, point_spec, student_args, train_lengths, train_seeds

DEFAULT_LENGTH = "1,2,5,10,20,all"
DEFAULT_WIDTH = "0.01,0.02,0.05,0.1,0.2,0.5,1"
FIELDS = ["stage", "point", "layers", "tokens", "width", "hsk_fraction", "cache_bytes", "metric", "mean", "std",
          "values", "gap", "stderr", "passes", "within_noise", "train_seconds"]


@dataclass
class Measured:
    """One budget's dev metric over the seeds (values in points, ×100)."""

    point: Point
    values: list[float]
    cost: float
    stage: str = ""
    gap: float = 0.0
    stderr: float = 0.0
    passes: bool = True
    within_noise: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class SearchResult:
    """What :func:`search_minimum` found: the reference (full HSK), every point measured in
    order, the chosen budget, and how many training runs it took (points × seeds)."""

    reference: Measured
    points: list[Measured] = field(default_factory=list)
    chosen: Measured | None = None
    runs: int = 0


def judge(m: Measured, ref: Measured, tolerance: float) -> Measured:
    """Set ``m``'s gap to the reference, its standard error (Welch: √(s₁²/n₁ + s₂²/n₂)) and
    the decision: passes when the gap is at most ``tolerance`` or at most 2 standard errors."""
    m.gap = ref.mean - m.mean
    m.stderr = math.sqrt(ref.std**2 / len(ref.values) + m.std**2 / len(m.values))
    noise = 2 * m.stderr
    m.passes = m.gap <= tolerance or m.gap <= noise
    m.within_noise = abs(m.gap) <= noise or abs(m.gap - tolerance) <= noise
    return m


def search_minimum(evaluate: Callable[[Point, int], float], cost: Callable[[Point], float],
                   depths: list[int], lengths: list[int | None], widths: list[float], seeds: list[int],
                   tolerance: float = 0.5) -> SearchResult:
    """The search itself, on any metric (the tests plant a minimum in a synthetic one).

    Args:
        evaluate: ``(point, seed) -> dev metric in points``; called once per point and seed.
        cost: ``point -> bytes`` (or any cost that grows with the budget), to order candidates.
        depths, lengths, widths: each axis's ladder, ascending; the last value is full
            (``None`` tokens: all).
        seeds: every point is trained once per seed.

    Raises:
        HskdError: an empty ladder or no seeds.
    """
    if not (depths and lengths and widths and seeds):
        raise HskdError("search needs at least one value per axis and one seed")
    ladders = {"depth": sorted(depths), "length": sorted(lengths, key=lambda t: t or 10**9), "width": sorted(widths)}
    top = {axis: len(v) - 1 for axis, v in ladders.items()}
    measured: dict[tuple, Measured] = {}

    def point_at(rungs: dict, panel: str) -> Point:
        return Point(panel, ladders["depth"][rungs["depth"]], ladders["length"][rungs["length"]],
                     ladders["width"][rungs["width"]])

    def measure(rungs: dict, stage: str) -> Measured:
        key = tuple(rungs[a] for a in ladders)
        if key not in measured:
            p = point_at(rungs, stage)
            measured[key] = Measured(p, [evaluate(p, seed) for seed in seeds], cost(p), stage)
            if key != tuple(top.values()):
                judge(measured[key], result.reference, tolerance)
            result.points.append(measured[key])
        return measured[key]

    full = dict(top)
    key = tuple(full.values())
    ref = Measured(point_at(full, "full"), [evaluate(point_at(full, "full"), seed) for seed in seeds],
                   cost(point_at(full, "full")), "full")
    measured[key] = ref
    result = SearchResult(reference=ref, points=[ref])
    minima = {}
    for axis in ladders:  # binary search for the smallest passing rung, the other axes full
        lo, hi = 0, top[axis]  # hi passes: it is full HSK along this axis
        while lo < hi:
            mid = (lo + hi) // 2
            if measure({**full, axis: mid}, axis).passes:
                hi = mid
            else:
                lo = mid + 1
        minima[axis] = lo
    current = dict(minima)
    best = measure(current, "joint")
    while not best.passes:
        candidates = [{**current, axis: current[axis] + 1} for axis in ladders if current[axis] < top[axis]]
        candidates.sort(key=lambda r: cost(point_at(r, "joint")))
        tried = []
        for rungs in candidates:
            m = measure(rungs, "joint")
            tried.append((rungs, m))
            if m.passes:
                break
        current, best = max(tried, key=lambda rm: (rm[1].passes, rm[1].mean))
    result.chosen = best
    result.runs = sum(len(m.values) for m in result.points)
    return result


def run_search(s, depth: str | None, length: str | None, width: str | None) -> SearchResult:
    """``hskd search``: one cache at the largest budget (every layer of the uniform map, every
    token slot, every dimension), a student per point and seed trained teacher-free from slices
    of it, ``search.csv``, ``search.md`` and ``search.png`` in ``--output-dir``. Points already
    trained (``points/NAME/seed-N``) are read back, not retrained.

    Raises:
        HskdError: no ``--teacher`` or ``--output-dir``, bad ladders or seeds.
    """
    from hskd.locks import OutputLock
    from hskd.seeds import parse_seeds

    if not s.teacher or not s.output_dir:
        raise HskdError("hskd search needs --teacher DIR and --output-dir DIR")
    seeds = parse_seeds(s.seeds or "42,43,44")
    with OutputLock(s.output_dir) as lock:
        return _run_search(s, depth, length or DEFAULT_LENGTH, width or DEFAULT_WIDTH, seeds, lock)


def _run_search(s, depth, length, width, seeds, lock) -> SearchResult:
    from hskd import pipeline
    from hskd.cache import CacheReader, array_shapes
    from hskd.knowledge import KnowledgeSpec
    from hskd.planner import npy_bytes

    out = Path(s.output_dir).expanduser()
    n_student = pipeline.student_depth(s)
    top = n_student + 1
    depths = _values(depth or ",".join(str(d) for d in range(1, top + 1)), int)
    lengths, widths = _values(length, int), [1.0 if w is None else w for w in _values(width, float)]
    if any(d is None or not 1 <= d <= top for d in depths) or max(depths) != top:
        raise HskdError(f"--depth values must be in 1..{top} and include {top} (full HSK) for a {n_student}-layer "
                        "student")
    if None not in lengths or any(t is not None and t < 1 for t in lengths):
        raise HskdError("--length values must be token counts of at least 1 and include 'all' (full HSK)")
    if any(not 0 < w <= 1 for w in widths) or 1.0 not in widths:
        raise HskdError("--width values must be fractions in (0, 1] and include 1 (full HSK)")
    data = pipeline.load_data(s)
    max_len = pipeline.max_length(s, data)
    length_strategy = s.length_strategy or "attention"
    # checked before the first run, not when a rung is reached after hours of training
    too_long = [t for t in lengths if t is not None and t > max_len]
    if too_long:
        raise HskdError(f"--length {too_long[0]} is longer than the {max_len} tokens of an example "
                        f"(--max-seq-length): use token counts up to {max_len}")
    if length_strategy in ("cls", "all") and len(lengths) > 1:
        raise HskdError(f"--length-strategy {length_strategy} ignores the token count, so every --length rung "
                        "is the same budget: give --length all, or a ranking strategy (attention, left)")
    big = KnowledgeSpec(logits=True, hidden=True, depth=s.depth_strategy or "uniform", layers=top, t_top=s.t_top,
                        length=length_strategy, tokens=max_len, width="all",
                        rank_layer=s.rank_layer or "mapped", rank_by=s.rank_by or "probs",
                        padding=s.hsk_padding or "exclude")
    if not out.exists():
        lock.created()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    if not (cache_dir / "manifest.json").exists():
        pipeline.make_cache(pipeline.with_changes(s, output_dir=str(cache_dir), knowledge=big.to_dict(),
                                                  overwrite=False))
    reader = CacheReader(cache_dir)
    row_lengths = train_lengths(s, data, max_len, reader)
    m = reader.manifest
    rows, d = m["rows"], m["teacher_hidden"]
    seconds: dict = {}  # point name -> training seconds of each seed; "metric" -> the metric's name

    def spec_of(p: Point) -> KnowledgeSpec:
        return point_spec(p, s, max_len)

    def evaluate(p: Point, seed: int) -> float:
        # the sweep's layout (points/NAME/seed-N) and read-back of finished runs; search_minimum
        # asks for one (point, seed) at a time
        child = pipeline.with_changes(s, cache=str(cache_dir), knowledge=spec_of(p).to_dict(), recipe=s.recipe or "mud")
        [record] = train_seeds(child, "distill", out / "points" / p.name, [seed], **student_args(s))
        seconds.setdefault(p.name, []).append(record["train_seconds"])
        seconds["metric"] = record["eval"]["main_metric"]
        return record["eval"]["main_value"] * 100

    def cost(p: Point) -> float:
        """Bytes on disk of a cache made at this budget alone, in the cache's storage."""
        spec = spec_of(p)
        plan = spec.resolve(n_student, m["teacher_layers"])
        # the writer's own arrays (dim_index too, for magnitude width), as the planner counts them
        shapes = array_shapes(spec, len(plan.pairs), rows, m["num_labels"], plan.tokens(max_len), plan.width(d), d,
                              m["teacher_heads"], max_len, reader.storage)
        return sum(npy_bytes(shape, dtype) for shape, dtype in shapes.values())

    result = search_minimum(evaluate, cost, depths, lengths, widths, seeds, s.tolerance)
    grid = len(depths) * len(lengths) * len(widths) * len(seeds)  # the full grid's runs, for comparison
    _write_outputs(out, s, result, reader, spec_of, n_student, seconds, data.task.name, seeds, grid, row_lengths)
    return result


def _write_outputs(out: Path, s, result: SearchResult, reader, spec_of, n_student, seconds, task, seeds,
                   grid: int, row_lengths) -> None:
    from hskd.report import plot_marginal_utility
    from hskd.runs import write_atomic, write_json

    metric = seconds.get("metric", "metric")
    rows = []
    for mm in result.points:
        p = mm.point
        plan = spec_of(p).resolve(n_student, reader.manifest["teacher_layers"])
        rows.append({"stage": mm.stage, "point": p.name, "layers": p.layers, "tokens": p.tokens or "all",
                     "width": p.width, "hsk_fraction": reader.hsk_fraction(plan, row_lengths), "cache_bytes": int(mm.cost),
                     "metric": metric, "mean": round(mm.mean, 3), "std": round(mm.std, 3),
                     "values": " ".join(f"{v:.2f}" for v in mm.values), "gap": round(mm.gap, 3),
                     "stderr": round(mm.stderr, 3), "passes": mm.passes, "within_noise": mm.within_noise,
                     "train_seconds": round(statistics.fmean(seconds.get(p.name, [0.0])), 1)})
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "search.csv", buffer.getvalue())
    chosen = next(r for r in rows if r["point"] == result.chosen.point.name)
    full = rows[0]
    write_json(out / "search.json", {"chosen": chosen, "full": full, "runs": result.runs, "grid_runs": grid,
                                     "seeds": seeds, "tolerance": s.tolerance})
    write_atomic(out / "search.md", search_table(rows, chosen, full, result.runs, seeds, s.tolerance, task, grid))
    plot_rows = [{"panel": r["stage"] if r["stage"] in ("depth", "length", "width") else "joint", "point": r["point"],
                  "hsk_fraction": r["hsk_fraction"], "value": r["mean"] / 100, "metric": metric} for r in rows[1:]]
    plot_marginal_utility(plot_rows, {"full HSK": full["mean"] / 100}, out / "search.png",
                          title=f"{task}: minimum-budget search, mean of {len(seeds)} seeds")


def search_table(rows: list[dict], chosen: dict, full: dict, runs: int, seeds: list[int], tolerance: float,
                 task: str, grid: int) -> str:
    """The search as markdown: every point in the order measured, and the verdict."""
    lines = [f"# Minimum-budget search: {task}", "",
             f"Seeds {','.join(map(str, seeds))}; tolerance {tolerance:g} points below full HSK; {runs} training runs "
             f"(the full grid of these ladders: {grid}).",
             "", "| stage | budget | HSK kept | cache bytes | dev mean ± std | per seed | gap | 2·SE | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "reference" if r is full else ("passes" if r["passes"] else "short") + \
            (" (within noise)" if r["within_noise"] else "")
        lines.append(f"| {r['stage']} | {r['point']} | {r['hsk_fraction'] * 100:.3f} % | {r['cache_bytes'] / 2**20:,.2f} "
                     f"MiB | {r['mean']:.2f} ± {r['std']:.2f} | {r['values']} | {r['gap']:+.2f} | "
                     f"{2 * r['stderr']:.2f} | {verdict} |")
    noisy = " The decision rested on noise: the gap is within 2 standard errors of 0 or of the tolerance." \
        if chosen["within_noise"] else ""
    lines += ["", f"**Chosen: {chosen['point']}** ({chosen['hsk_fraction'] * 100:.3f} % of the HSK, "
              f"{chosen['cache_bytes'] / 2**20:,.2f} MiB as its own cache, {chosen['train_seconds']:.0f} s of training "
              f"a seed): {chosen['mean']:.2f} ± {chosen['std']:.2f} against full HSK's {full['mean']:.2f} ± "
              f"{full['std']:.2f} (gap {chosen['gap']:+.2f}).{noisy}"]
    return "\n".join(lines) + "\n"

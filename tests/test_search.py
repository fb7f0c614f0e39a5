"""hskd search: finds a planted minimum with fewer runs than the grid, takes the seeds' spread
into account, and on real files writes its curve and skips finished points on a rerun."""

import csv
import json

import pytest

from hskd.search import search_minimum
from tests.conftest import TINY, run_cli

DEPTHS, LENGTHS, WIDTHS = [1, 2, 3, 4], [1, 2, 5, 10, 20, None], [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
SEEDS = [42, 43, 44]


def _cost(p) -> float:  # bytes grow with every axis
    return p.layers * (p.tokens or 64) * p.width


def _planted(d_min: int, t_min: int, w_min: float, calls: list, jitter: float = 0.05):
    """80 points at and above the planted minimum on every axis, 3 points less below it, plus a
    small seed-dependent jitter (the seeds differ, as real ones do)."""

    def evaluate(p, seed):
        calls.append((p.name, seed))
        ok = p.layers >= d_min and (p.tokens or 10**9) >= t_min and p.width >= w_min
        return (80.0 if ok else 77.0) + jitter * (seed - 43)

    return evaluate


@pytest.mark.parametrize("planted", [(2, 5, 0.1), (1, 1, 0.01), (4, None, 1.0), (3, 20, 0.02)])
def test_the_search_finds_a_planted_minimum_with_far_fewer_runs_than_the_grid(planted):
    calls: list = []
    d, t, w = planted
    result = search_minimum(_planted(d, t or 10**9, w, calls), _cost, DEPTHS, LENGTHS, WIDTHS, SEEDS, tolerance=0.5)
    c = result.chosen.point
    assert (c.layers, c.tokens, c.width) == (d, t, w)
    grid = len(DEPTHS) * len(LENGTHS) * len(WIDTHS) * len(SEEDS)
    assert result.runs == len(calls) == len(set(calls))  # each point and seed trained once
    assert result.runs <= 15 * len(SEEDS) < grid / 10  # 504 runs for the grid
    assert result.reference.point.name == "4l_allt_1h" and result.points[0] is result.reference


def test_interacting_dimensions_are_resolved_jointly():
    # each axis alone passes at its lowest rung, but few tokens need a wider slice to pass
    def evaluate(p, seed):
        few = (p.tokens or 10**9) < 10
        return 80.0 if not (few and p.width < 0.5) else 76.0

    result = search_minimum(evaluate, _cost, DEPTHS, [1, 10, None], [0.1, 0.5, 1.0], SEEDS)
    c = result.chosen
    assert c.passes and c.stage == "joint"
    assert (c.point.tokens or 10**9) >= 10 or c.point.width >= 0.5
    joint = [m for m in result.points if m.stage == "joint"]
    assert not joint[0].passes  # the per-axis minima together fall short, and were raised


def test_a_gap_within_the_seeds_noise_is_not_ruled_out_and_is_flagged():
    spread = {42: -2.0, 43: 0.0, 44: 2.0}  # std 2 points: a 1-point gap is noise

    def evaluate(p, seed):
        return (80.0 if p.layers == 4 else 79.0) + spread[seed]

    result = search_minimum(evaluate, _cost, [1, 4], [None], [1.0], SEEDS, tolerance=0.5)
    c = result.chosen
    assert c.point.layers == 1 and c.passes and c.within_noise
    assert c.gap == pytest.approx(1.0) and 2 * c.stderr > 1.0
    quiet = search_minimum(lambda p, s: 80.0 if p.layers == 4 else 79.0, _cost, [1, 4], [None], [1.0], SEEDS)
    assert quiet.chosen.point.layers == 4  # the same gap with no spread is a real shortfall


def test_hskd_search_writes_its_curve_and_a_rerun_skips_finished_points(tmp_path, capsys, tiny_glue, tiny_teacher,
                                                                        tiny_narrow, monkeypatch):
    out = tmp_path / "search"
    args = ("search", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
            "--student-model", tiny_narrow, "--student-layers", "2", "--output-dir", out,
            "--depth", "1,3", "--length", "2,all", "--width", "0.5,1", "--seeds", "1,2",
            "--hsk-epochs", "1", "--max-steps", "1", "--storage", "int8", *TINY)
    assert run_cli(*args) == 0
    assert "chosen" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert rows[0]["stage"] == "full" and rows[0]["point"] == "3l_allt_1h"
    assert all(len(r["values"].split()) == 2 for r in rows)  # two seeds each
    assert {r["stage"] for r in rows} >= {"full", "depth", "length", "width", "joint"}
    summary = json.loads((out / "search.json").read_text())
    assert summary["runs"] == 2 * len(rows) and summary["grid_runs"] == 16
    assert (out / "search.png").stat().st_size > 0 and "Chosen:" in (out / "search.md").read_text()
    assert json.loads((out / "cache" / "manifest.json").read_text())["storage"] == "int8"
    # a rerun trains nothing: every point and seed is read back
    from hskd import pipeline

    trained = []
    real = pipeline.train_job

    def spy(s, job, **kw):
        record = real(s, job, **kw)
        trained.append(record.get("reused", False))
        return record

    monkeypatch.setattr(pipeline, "train_job", spy)
    before = {p: p.stat().st_mtime_ns for p in out.glob("points/*/seed-*/model.safetensors")}
    assert run_cli(*args, "--tolerance", "2") == 0  # another decision rule: the same trained points
    assert len(trained) == 2 * len(rows)
    assert {p: p.stat().st_mtime_ns for p in out.glob("points/*/seed-*/model.safetensors")} == before
    # ladders that cannot work are refused before anything is trained
    for bad, message in ((("--length", "2,999,all"), "longer than"),
                         (("--length", "2,all", "--length-strategy", "cls"), "same budget")):
        assert run_cli(*args, *bad, "--output-dir", tmp_path / "bad") == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()

"""`hskd sweep` (one cache, one student per point, resumable, CSV + plot) and `hskd report`."""

import csv
import json
import statistics

import pytest

from hskd.errors import HskdError
from hskd.sweep import grid
from tests.conftest import TINY, run_cli


def test_grid_has_one_panel_per_dimension_and_joint_points():
    points = grid("1,2", "2,all", "0.5,1", n_student=2)
    by_panel = {}
    for p in points:
        by_panel.setdefault(p.panel, []).append(p.name)
    assert by_panel == {"depth": ["1l_allt_1h", "2l_allt_1h"], "length": ["3l_2t_1h", "3l_allt_1h"],
                        "width": ["3l_allt_0.5h", "3l_allt_1h"], "joint": ["1l_2t_0.5h", "2l_allt_1h"]}
    assert len(grid("1,2", "2,all", "0.5,1", n_student=2, full=True)) == 6 + 8
    with pytest.raises(HskdError):
        grid("5", "1", "1", n_student=2)
    with pytest.raises(HskdError):
        grid("1", "1", "1.5", n_student=2)


@pytest.mark.slow
def test_sweep_trains_each_point_once_and_resumes(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_narrow):
    out = tmp_path / "sweep"
    args = ("sweep", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--output-dir", out,
            "--student-model", tiny_narrow, "--student-layers", "2", "--depth", "1,3", "--length", "2,all",
            "--width", "0.25,1", "--hsk-epochs", "1", *TINY)
    assert run_cli(*args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(grid("1,3", "2,all", "0.25,1", n_student=2))
    assert {r["panel"] for r in rows} == {"depth", "length", "width", "joint"}
    fractions = {r["point"]: float(r["hsk_fraction"]) for r in rows}
    assert fractions["3l_allt_1h"] == pytest.approx(1.0)
    assert 0 < fractions["1l_2t_0.25h"] < fractions["3l_2t_1h"] < 1
    assert (out / "marginal_utility.png").read_bytes()[:4] == b"\x89PNG"
    stamps = {p.name: (p / "hskd.json").stat().st_mtime_ns for p in (out / "points").iterdir()}
    assert run_cli(*args) == 0  # a rerun keeps and skips every finished point
    assert {p.name: (p / "hskd.json").stat().st_mtime_ns for p in (out / "points").iterdir()} == stamps
    assert list(csv.DictReader((out / "results.csv").open())) == rows
    capsys.readouterr()
    assert run_cli("report", out / "points" / "1l_2t_0.25h", out / "student-finetune") == 0
    table = capsys.readouterr().out
    assert "| 1l_2t_0.25h | mud | 1l_2t_0.25h (uniform/attention/uniform)" in table
    assert "| student-finetune | finetune | - |" in table


def test_report_refuses_a_directory_without_runs(tmp_path, capsys):
    assert run_cli("report", tmp_path) == 2
    assert "holds no finished hskd run" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_with_seeds_trains_each_point_per_seed_and_reports_the_spread(tmp_path, capsys, tiny_glue, tiny_teacher,
                                                                            tiny_narrow):
    out = tmp_path / "sweep"
    args = ("sweep", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--output-dir", out,
            "--student-model", tiny_narrow, "--student-layers", "2", "--depth", "1", "--length", "all",
            "--width", "0.25", "--hsk-epochs", "1", "--seeds", "3,5", *TINY)
    assert run_cli(*args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["point"] for r in rows} == {"1l_allt_1h", "3l_allt_1h", "3l_allt_0.25h", "1l_allt_0.25h"}
    for r in rows:
        folders = sorted(p.name for p in (out / "points" / r["point"]).iterdir())
        assert folders == ["seed-3", "seed-5"]
        recorded = [json.loads((out / "points" / r["point"] / f / "hskd.json").read_text()) for f in folders]
        values = [rec["eval"]["main_value"] for rec in recorded]
        assert r["seeds"] == "3 5"
        assert [float(v) for v in r["values"].split()] == pytest.approx(values, abs=1e-6)
        assert float(r["value"]) == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert float(r["std"]) == pytest.approx(statistics.stdev(values), abs=1e-6)
    # each seed is its own run: the seeds reach training and give different students
    weights = [(out / "points" / "3l_allt_1h" / f"seed-{x}" / "model.safetensors").read_bytes() for x in (3, 5)]
    assert weights[0] != weights[1]
    assert sorted(p.name for p in (out / "student-finetune").iterdir()) == ["seed-3", "seed-5"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "points").glob("*/seed-*/hskd.json")}
    assert run_cli(*args) == 0  # a rerun reads every finished seed back
    assert {p: p.stat().st_mtime_ns for p in (out / "points").glob("*/seed-*/hskd.json")} == stamps
    capsys.readouterr()
    assert run_cli("report", out) == 0  # one row per point and seed
    table = capsys.readouterr().out
    assert "| sweep/1l_allt_0.25h/seed-3 | mud |" in table and "| sweep/1l_allt_0.25h/seed-5 | mud |" in table

"""bench/results.sh dispatches every step to its own commands.

The script is a bash `case` over step names, some written as glob patterns (e.g. `sst2-10k-*`
would catch any later `sst2-10k-...` step). A step shadowed by an earlier pattern runs another
step's commands silently, so docs/RESULTS.md would name a command that never made its numbers.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "results.sh"


def _labels_and_steps() -> tuple[list[str], list[str]]:
    text = SCRIPT.read_text()
    labels = re.findall(r"^\s{2,6}([a-z0-9*|-]+)\)", text, re.M)
    loop = text[text.index('if [ "${1:-}" = all ]') :]
    steps = re.search(r"for s in (.*?); do step", loop, re.S).group(1).replace("\\", "").split()
    return labels, steps


def test_every_step_of_all_reaches_its_own_case_label() -> None:
    labels, steps = _labels_and_steps()
    assert len(steps) > 50 and len(set(steps)) == len(steps)
    for name in steps:
        # bash takes the first label with a matching pattern; fnmatch agrees for these patterns
        first = next(label for label in labels if any(fnmatch.fnmatchcase(name, p) for p in label.split("|")))
        assert name in first.split("|"), f"step {name} runs label {first}"


def test_dry_run_of_sst2_ird_seeds_prints_three_seeded_schedules(tmp_path: Path) -> None:
    env = {**os.environ, "HSKD": "echo", "PYTHON": "echo", "GLUE_DIR": str(tmp_path)}
    out = subprocess.run(["bash", str(SCRIPT), "sst2-ird-seeds"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert [re.search(r"--ird-schedule (\S+)", line).group(1) for line in out] == ["all", "progressive", "stacked"]
    assert all("--seeds 42,43,44" in line and "--output-dir sst2/ird-" in line for line in out)
    assert ["--stage-epochs 1 " in out[0], "--stage-epochs 0.34 " in out[2]] == [True, True]

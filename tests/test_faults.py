"""Fault injection and concurrency, in real processes: ``distill`` and ``cache`` killed with
SIGKILL at 20+ points between them (every file write, rename, flush and save) and resumed to the
result of an uninterrupted run; a second run into a folder another process holds; a stale lock.

The processes are forked from a forkserver that has hskd, torch and transformers imported, so
each one costs its job's work, not the imports."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["hskd.cli", "hskd.pipeline", "hskd.train", "tests.test_faults"])


def _watch_writes(kill_at: int) -> list[int]:
    """Count every durable write of this process (renames, safetensors and torch saves, memmap
    flushes); at call ``kill_at`` die by SIGKILL, in the middle of the write for saves (half the
    bytes on disk) and just before it otherwise."""
    import numpy
    import safetensors.torch

    calls = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(owner, name, half_write=None):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                if half_write is not None:
                    half_write(*args, **kwargs)
                die()
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    def half_torch_save(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        torch.serialization.save(obj, buffer)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    def half_safetensors(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])

    hook(os, "replace")
    hook(torch, "save", half_torch_save)
    hook(safetensors.torch, "save_file", half_safetensors)
    hook(numpy.memmap, "flush")
    return calls


def _child(argv: list[str], kill_at: int, count_file: str) -> None:
    calls = _watch_writes(kill_at)
    from hskd.cli import main

    code = main(argv)
    Path(count_file).write_text(str(calls[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(argv, kill_at: int = 0, tmp: Path | None = None) -> tuple[int, int]:
    """Run ``hskd ARGV`` in a forked process; returns (exit code, writes counted)."""
    count_file = tmp / f"count-{time.monotonic_ns()}"
    p = CTX.Process(target=_child, args=([str(a) for a in argv], kill_at, str(count_file)))
    p.start()
    p.join(300)
    assert p.exitcode is not None, "the child hung"
    n = int(count_file.read_text()) if count_file.exists() else -1
    return p.exitcode, n


def _kill_points(n: int, k: int, seed: int) -> list[int]:
    """``k`` kill points among writes 1..n (all of them when there are fewer), in order."""
    return sorted(random.Random(seed).sample(range(1, n + 1), min(k, n)))


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_kills_at_random_points_resume_to_the_uninterrupted_result(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    distill = ["distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
               "--student-model", tiny_narrow, "--student-layers", "2", "--recipe", "mud", "--knowledge", "1l_4t_0.5h",
               "--hsk-epochs", "2", *TINY]
    cache = ["cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--knowledge",
             "2l_4t_0.5h", "--student-layers", "2", "--eval-batch-size", "4", "--quiet"]
    code, n_distill = _run([*distill, "--output-dir", tmp_path / "whole-distill"], tmp=tmp_path)
    assert code == 0
    code, n_cache = _run([*cache, "--output-dir", tmp_path / "whole-cache"], tmp=tmp_path)
    assert code == 0
    whole = _weights(tmp_path / "whole-distill")
    whole_cache = {f.name: f.read_bytes() for f in sorted((tmp_path / "whole-cache").glob("*.npy"))}

    killed = []
    for k in _kill_points(n_distill, 10, seed=1):
        out = tmp_path / f"distill-killed-at-{k}"
        code, _ = _run([*distill, "--output-dir", out], kill_at=k, tmp=tmp_path)
        assert code == -signal.SIGKILL, f"write {k} of {n_distill} was not reached"
        code, _ = _run([*distill, "--output-dir", out, "--resume"], tmp=tmp_path)
        assert code == 0, f"distill killed at write {k} did not resume"
        assert json.loads((out / "hskd.json").read_text())["status"] == "complete"
        resumed = _weights(out)
        assert resumed.keys() == whole.keys()
        assert all(torch.allclose(resumed[n], whole[n], atol=1e-5) for n in whole), f"killed at write {k}"
        assert not list(out.rglob(".saving")), "a staging folder was left behind"
        killed.append(k)
    for k in _kill_points(n_cache, 10, seed=2):
        out = tmp_path / f"cache-killed-at-{k}"
        code, _ = _run([*cache, "--output-dir", out], kill_at=k, tmp=tmp_path)
        assert code == -signal.SIGKILL
        code, _ = _run([*cache, "--output-dir", out], tmp=tmp_path)  # a rerun resumes the .partial
        assert code == 0, f"cache killed at write {k} did not resume"
        assert {f.name: f.read_bytes() for f in sorted(out.glob("*.npy"))} == whole_cache, f"killed at write {k}"
        assert not out.with_name(out.name + ".partial").exists()
        killed.append(k)
    assert len(killed) >= 20, (n_distill, n_cache)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until killed."""
    code = ("import sys, time\nfrom hskd.locks import OutputLock\nOutputLock(sys.argv[1]).__enter__()\n"
            "print('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_locked_folder_is_refused_untouched_and_a_stale_lock_is_taken_over(tmp_path, tiny_glue, tiny_backbone,
                                                                             tiny_teacher):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("another run's file")  # what the other process wrote so far
    holder = _hold_lock(out)
    try:
        finetune = ["finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone, *TINY]
        proc = subprocess.run([sys.executable, "-m", "hskd.cli", *map(str, finetune), "--output-dir", str(out),
                               "--overwrite"], capture_output=True, text=True, cwd=REPO)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
        assert f"is in use by another hskd process (pid {holder.pid} on" in err[0]
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # touched nothing, deleted nothing
        # a cache --overwrite may not delete the .partial another process is writing
        partial = tmp_path / "cache.partial"
        partial.mkdir()
        (partial / "plan.json").write_text("{}")
        cache_holder = _hold_lock(tmp_path / "cache")
        try:
            code, _ = _run(["cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                            "--knowledge", "1l_2t", "--student-layers", "2", "--quiet", "--overwrite",
                            "--output-dir", tmp_path / "cache"], tmp=tmp_path)
            assert code == 2 and (partial / "plan.json").exists()
        finally:
            cache_holder.kill()
            cache_holder.wait()
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, stale
        holder.wait()
    assert (tmp_path / "run.lock").exists()
    code, _ = _run([*finetune, "--output-dir", tmp_path / "fresh"], tmp=tmp_path)
    assert code == 0
    (out / "keep.txt").unlink()
    code, _ = _run([*finetune, "--output-dir", out], tmp=tmp_path)  # the stale lock is taken over
    assert code == 0 and json.loads((out / "hskd.json").read_text())["status"] == "complete"
    assert not (tmp_path / "run.lock").exists()  # released on exit


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once(tmp_path, tiny_glue, tiny_teacher, tiny_narrow):
    out = tmp_path / "race"
    argv = ["distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--student-model",
            tiny_narrow, "--student-layers", "2", "--recipe", "kd", *TINY, "--output-dir", out]
    procs = [subprocess.Popen([sys.executable, "-m", "hskd.cli", *map(str, argv)], stderr=subprocess.PIPE,
                              text=True, cwd=REPO) for _ in range(2)]
    results = [(p.wait(300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results  # one trains; the other is refused in one line
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("in use by another hskd process" in refused[0] or "finished run" in refused[0])
    record = json.loads((out / "hskd.json").read_text())
    assert record["status"] == "complete" and (out / "model.safetensors").exists()


def test_cache_refuses_a_full_disk_before_writing(tmp_path, monkeypatch, capsys, tiny_glue, tiny_teacher):
    import errno
    import shutil

    from tests.conftest import run_cli

    args = ["cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--knowledge",
            "1l_2t", "--student-layers", "2", "--quiet"]
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100))
    assert run_cli(*args, "--output-dir", tmp_path / "full") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MiB free" in err[0] and "the cache needs" in err[0]
    assert not list(tmp_path.glob("full*"))  # no .partial, no lock left behind
    monkeypatch.undo()

    def no_space(fd, offset, length):  # the space went between the check and the allocation
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    assert run_cli(*args, "--output-dir", tmp_path / "full") == 2
    assert "MiB free" in capsys.readouterr().err and not list(tmp_path.glob("full*"))


def test_a_read_only_parent_is_one_line(tmp_path, capsys, tiny_glue, tiny_backbone):
    from tests.conftest import run_cli

    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):  # root ignores permissions: make the parent a file's child instead
            parent.chmod(0o755)
            (tmp_path / "file").write_text("")
            parent = tmp_path / "file"
        code = run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                       "--output-dir", parent / "out", *TINY)
    finally:
        (tmp_path / "ro").chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("hskd: error: cannot"), err
    assert np.all([not p.name.startswith("out") for p in tmp_path.rglob("*")])

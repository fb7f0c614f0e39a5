"""Ownership of output folders: one process at a time writes a run, a cache or a sweep.

A job takes :class:`OutputLock` on ``DIR`` before it writes or deletes anything there. The lock is
a file ``DIR.lock`` beside the folder (so it also covers a cache's ``DIR.partial``), held with
``fcntl.flock``: the kernel releases it when the holder exits, however it exits, so a lock left
by a killed process is stale and simply taken over. The file names the holder (pid, host,
command, start time) so that a refused run can say who holds it.

We do not use the ``filelock`` package here: its Unix lock opens the file with ``O_TRUNC``, so
every contender erases the holder's pid and host before it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from hskd.device import is_main_process
from hskd.errors import HskdError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; O_EXCL creation below still refuses a live lock
    fcntl = None


def lock_path(out: Path) -> Path:
    """The lock file of output folder ``out``: ``out.lock`` beside it."""
    return out.with_name(out.name + ".lock")


class OutputLock:
    """An exclusive lock on output folder ``out`` for this process, as a context manager.

    Entering takes the lock (on rank 0 only, under ``torchrun``; missing parent folders are
    created); leaving releases it and removes the lock file. If the block raises
    :class:`hskd.errors.HskdError` (a user error), what this process created is deleted:
    ``out`` itself when :meth:`created` was called for it and it holds no finished work, and
    the parent folders the lock made. Other exceptions (a crash, a kill, Ctrl-C) keep ``out``
    so that ``--resume`` can continue it.

    Raises (on enter):
        HskdError: another live process holds the lock (its pid, host and command are named),
            or the parent folder cannot be written.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out).expanduser()
        self.file = lock_path(self.out)
        self._fd: int | None = None
        self._made_parents: list[Path] = []
        self._created = False

    def __enter__(self) -> OutputLock:
        if not is_main_process():  # under torchrun rank 0 holds the lock for every rank
            return self
        self._make_parents()
        try:
            self._acquire()
        except BaseException:
            self._remove_parents()
            raise
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is not None and issubclass(kind, HskdError) and self._created:
                if self.out.exists() and not holds_finished_work(self.out):
                    shutil.rmtree(self.out, ignore_errors=True)
        finally:
            self._release()
            if kind is not None:
                self._remove_parents()

    def created(self) -> None:
        """Record that this process made ``out`` (so a user error deletes it again)."""
        self._created = True

    def _make_parents(self) -> None:
        missing = [p for p in reversed(self.out.parents) if not p.exists()]
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HskdError(f"cannot create {self.out.parent} ({exc.strerror}); choose another --output-dir") from None
        self._made_parents = missing

    def _remove_parents(self) -> None:
        for p in reversed(self._made_parents):  # innermost first; only if still empty
            try:
                p.rmdir()
            except OSError:
                break

    def _acquire(self) -> None:
        for _ in range(10):  # retried only when the file was replaced between open and lock
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o644)
            except FileExistsError:
                raise HskdError(self._busy_message()) from None
            except OSError as exc:
                raise HskdError(f"cannot write the lock {self.file} ({exc.strerror}); "
                                "make the folder writable or choose another --output-dir") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise HskdError(self._busy_message()) from None
                except OSError as exc:  # a filesystem without locks (ENOLCK on some network mounts)
                    os.close(fd)
                    raise HskdError(f"cannot lock {self.file} ({exc.strerror}); write to a local disk") from None
                # the holder before us may have removed the file after we opened it: then our lock
                # is on a file nobody else sees, so open the current one again
                try:
                    same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                     "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(owner).encode())
            os.fsync(fd)
            self._fd = fd
            return
        raise HskdError(f"could not take the lock {self.file}; retry")

    def _busy_message(self) -> str:
        try:
            owner = json.loads(self.file.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"
        return (f"{self.out} is in use by another hskd process ({who}); wait for it to finish or choose "
                f"another --output-dir (if that process is gone, delete {self.file})")

    def _release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.file)  # while still locked: a contender then sees the inode change
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def holds_finished_work(path: Path) -> bool:
    """A finished model, cache or sweep point under ``path`` (kept even if a later step fails)."""
    for record in path.rglob("hskd.json"):
        try:
            if json.loads(record.read_text()).get("status") == "complete":
                return True
        except (OSError, ValueError):
            continue
    return any(path.rglob("manifest.json"))

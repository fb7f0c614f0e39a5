"""The one safe-write helper: every file hskd writes goes through a temporary name in the same
folder and an atomic rename, so a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hskd.errors import HskdError


def _temporary(path: Path) -> Path:
    """The temporary name a file is written under before its rename (same folder, this process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = _temporary(path)
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def read_json(path: Path, fix: str):
    """Read a JSON file hskd wrote (a record, a manifest, progress).

    Raises:
        HskdError: it cannot be read or is not valid JSON (truncated, edited by hand); the
            message names the file and ``fix``.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:80]
        raise HskdError(f"{path} is unreadable or malformed ({reason}); {fix}") from None


def write_json(path: Path, data) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=2, default=str))


def save_atomic(tensors: dict, path: Path) -> None:
    """``safetensors`` :func:`save_file` through a temporary name and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _temporary(path)
    save_file(tensors, tmp)
    os.replace(tmp, path)

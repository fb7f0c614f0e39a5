"""Registries: the named parts a user can add without editing hskd (loss terms, selectors,
knowledge builders), and ``--plugin``, which imports a user's module so that it registers its own.

A part is registered by name with a decorator, e.g. ``@register_loss("hidden_mse")``; an
unknown name is an error that lists the registered ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hskd.errors import HskdError


class Registry:
    """Name -> part, for one kind of part (``kind`` names it in messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, Any] = {}

    def register(self, name: str) -> Callable:
        """Decorator: register the decorated class or function under ``name``.

        Registering the same definition again (a plugin module imported twice) is a no-op.

        Raises:
            HskdError: ``name`` is taken by a different definition.
        """
        def wrap(part):
            have = self._parts.get(name)
            if have is not None and _identity(have) != _identity(part):
                raise HskdError(f"{self.kind} {name!r} is already registered (by {_identity(have)}); choose another name")
            self._parts[name] = part
            return part
        return wrap

    def get(self, name: str):
        """The part registered as ``name``.

        Raises:
            HskdError: no such part; the message lists the registered names.
        """
        if name not in self._parts:
            raise HskdError(f"unknown {self.kind} {name!r}: use one of {', '.join(self._parts)} "
                            "(or register one with --plugin)")
        return self._parts[name]

    def __getitem__(self, name: str):
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def names(self) -> list[str]:
        return list(self._parts)


def _identity(part) -> str:
    """Where a part is defined: a file imported twice (by pytest and by --plugin) is the same part."""
    import inspect

    try:
        where = inspect.getsourcefile(part) or part.__module__
    except TypeError:
        where = getattr(part, "__module__", "?")
    return f"{where}:{getattr(part, '__qualname__', repr(part))}"


def load_plugin(spec: str) -> None:
    """Import a user's module so that it registers its loss terms, selectors or builders.

    Args:
        spec: an import path (``my_package.kd_terms``) or a ``.py`` file.

    Raises:
        HskdError: the file or module cannot be found or fails to import (in one line).
    """
    path = Path(spec).expanduser()
    name = "hskd_plugin_" + path.resolve().as_posix().replace("/", "_").replace(".", "_")
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise HskdError(f"--plugin {spec}: file not found")
            if name in sys.modules:
                return
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except HskdError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's module: report it in one line
        sys.modules.pop(name, None)  # a failed file import leaves no half-made module
        raise HskdError(f"--plugin {spec} failed to import ({exc.__class__.__name__}: {str(exc)[:200]})") from None


def load_plugins(specs: str | list[str] | None) -> None:
    """``--plugin a,b`` or a YAML list: load each (see :func:`load_plugin`)."""
    if not specs:
        return
    for spec in specs if isinstance(specs, list) else str(specs).split(","):
        if spec.strip():
            load_plugin(spec.strip())

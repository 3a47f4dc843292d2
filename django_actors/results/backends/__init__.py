"""Results backends. ``RedisBackend`` and ``DatabaseBackend`` import lazily."""

from __future__ import annotations

from typing import Any

from .stub import StubBackend

__all__ = ["DatabaseBackend", "RedisBackend", "StubBackend"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from .redis import RedisBackend

        return RedisBackend
    if name == "DatabaseBackend":
        from .database import DatabaseBackend

        return DatabaseBackend
    raise AttributeError(name)

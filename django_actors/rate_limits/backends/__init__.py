"""Rate limiter backends: :class:`StubBackend` (in memory) and :class:`RedisBackend`.

The Redis backend is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .stub import StubBackend

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["RedisBackend", "StubBackend"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from .redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

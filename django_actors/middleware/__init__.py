"""Middleware: one module each. ``Results`` is re-exported from :mod:`django_actors.results`."""

from __future__ import annotations

from typing import Any

from .age_limit import AgeLimit
from .callbacks import Callbacks
from .current_message import CurrentMessage
from .group_callbacks import GroupCallbacks
from .middleware import Middleware, MiddlewareError, SkipMessage, get_option
from .pipelines import Pipelines
from .retries import Retries
from .shutdown import Shutdown, ShutdownNotifications
from .time_limit import TimeLimit, TimeLimitExceeded

__all__ = [
    "AgeLimit",
    "Callbacks",
    "CurrentMessage",
    "DbConnections",
    "DjangoSignals",
    "GroupCallbacks",
    "Middleware",
    "MiddlewareError",
    "Mirror",
    "Pipelines",
    "Results",
    "Retries",
    "Shutdown",
    "ShutdownNotifications",
    "SkipMessage",
    "TimeLimit",
    "TimeLimitExceeded",
    "get_option",
]


#: Middleware imported on first access: they touch Django (models, signals).
_LAZY = {
    "Results": ("..results.middleware", "Results"),
    "DbConnections": (".django_db", "DbConnections"),
    "DjangoSignals": (".signals", "DjangoSignals"),
    "Mirror": (".mirror", "Mirror"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

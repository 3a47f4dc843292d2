"""Middleware: one module each. ``Results`` is re-exported from :mod:`django_actors.results`."""

from __future__ import annotations

from typing import Any

from .age_limit import AgeLimit
from .callbacks import Callbacks
from .current_message import CurrentMessage
from .middleware import Middleware, MiddlewareError, SkipMessage, get_option
from .pipelines import Pipelines
from .retries import Retries
from .shutdown import Shutdown, ShutdownNotifications
from .time_limit import TimeLimit, TimeLimitExceeded

__all__ = [
    "AgeLimit",
    "Callbacks",
    "CurrentMessage",
    "Middleware",
    "MiddlewareError",
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


def __getattr__(name: str) -> Any:
    if name == "Results":
        from ..results.middleware import Results

        return Results
    raise AttributeError(name)

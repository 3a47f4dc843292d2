"""The RateLimiter base class and argument checks shared by the limiters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import RateLimitExceeded
from .backend import RateLimiterBackend


def check_key(key: object) -> str:
    """Return ``key`` if it is a non-empty string.

    Raises:
      ValueError: when it is not.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    return key


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int greater than zero.

    Raises:
      ValueError: naming ``name`` when it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_backend(backend: object) -> RateLimiterBackend:
    """Return ``backend`` if it is a :class:`RateLimiterBackend`.

    Raises:
      TypeError: when it is not.
    """
    if not isinstance(backend, RateLimiterBackend):
        raise TypeError(f"backend must be a RateLimiterBackend, got {type(backend).__name__}")
    return backend


class RateLimiter:
    """Base class for rate limiters.

    Subclasses implement :meth:`_acquire` and, when a slot must be given
    back, :meth:`_release`. One limiter can be shared by many threads.

    Parameters:
      backend: where the limiter's state is kept.
      key: the name of the limited resource; limiters with the same key and
        backend share one limit.

    Raises:
      ValueError: when ``key`` is empty.
    """

    def __init__(self, backend: RateLimiterBackend, key: str) -> None:
        self.backend = check_backend(backend)
        self.key = check_key(key)

    def _acquire(self, token: str) -> bool:
        """Try to take a slot for the caller identified by ``token``."""
        raise NotImplementedError

    def _release(self, token: str) -> None:
        """Give back the slot taken with ``token`` (nothing by default)."""

    @contextmanager
    def acquire(self, *, raise_on_failure: bool = True) -> Iterator[bool]:
        """Take a slot for the duration of a ``with`` block.

        Parameters:
          raise_on_failure: raise when no slot is free; otherwise the block
            runs with ``False`` bound to the ``as`` target.

        Raises:
          RateLimitExceeded: when no slot is free and ``raise_on_failure`` is set.

        Returns:
          A context manager yielding whether the slot was taken.
        """
        token = uuid.uuid4().hex
        if not self._acquire(token):
            if raise_on_failure:
                raise RateLimitExceeded(f"{type(self).__name__} {self.key!r}: rate limit exceeded")
            yield False
            return
        try:
            yield True
        finally:
            self._release(token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r})"

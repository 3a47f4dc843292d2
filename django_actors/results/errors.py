"""Errors raised when reading results."""

from __future__ import annotations

from ..errors import DjangoActorsError


class ResultError(DjangoActorsError):
    """Base class for result errors."""


class ResultMissing(ResultError):
    """There is no result yet (and the caller did not block)."""


class ResultTimeout(ResultError):
    """A blocking wait for a result ran out of time."""


class ResultFailure(ResultError):
    """The message (or a member of the composition) failed for good.

    Attributes:
      orig_exc_type: the name of the exception the actor raised.
      orig_exc_msg: its text.
    """

    def __init__(self, message: str = "", orig_exc_type: str = "", orig_exc_msg: str = "") -> None:
        super().__init__(message)
        self.orig_exc_type = orig_exc_type
        self.orig_exc_msg = orig_exc_msg


class CompositionCancelled(ResultFailure):
    """The pipeline or group was cancelled before it finished."""

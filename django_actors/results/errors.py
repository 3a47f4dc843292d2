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

    Its text is ``"actor raised <type>: <message>"`` for a message's result
    (as dramatiq's), and names the composition for a pipeline or group.

    Attributes:
      orig_exc_type: the name of the exception the actor raised.
      orig_exc_msg: its text.
      message_id: the failed message's id, when the failure was read from a
        message's result; ``None`` otherwise.
    """

    def __init__(
        self, message: str = "", orig_exc_type: str = "", orig_exc_msg: str = "", *, message_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.orig_exc_type = orig_exc_type
        self.orig_exc_msg = orig_exc_msg
        self.message_id = message_id


class CompositionCancelled(ResultFailure):
    """The pipeline or group was cancelled before it finished."""

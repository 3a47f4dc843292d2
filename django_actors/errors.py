"""The exceptions raised by django_actors.

Every error the library raises derives from :class:`DjangoActorsError`, so a
caller can catch them all at once. The names follow dramatiq's so that code
moving over keeps its ``except`` clauses.
"""

from __future__ import annotations

from typing import Any


class DjangoActorsError(Exception):
    """Base class for every error raised by django_actors."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return str(self.message) or repr(self)


#: dramatiq's name for the base class.
DramatiqError = DjangoActorsError


class BrokerError(DjangoActorsError):
    """Base class for broker-related errors."""


class ActorNotFound(BrokerError):
    """Raised when a message names an actor the broker does not know."""


class QueueNotFound(BrokerError):
    """Raised when a queue is used before it was declared."""


class QueueJoinTimeout(DjangoActorsError):
    """Raised by ``join`` when the queue is not empty before the timeout."""


class BrokerConnectionError(BrokerError):
    """Base class for broker connection errors."""


#: dramatiq 1's name for :class:`BrokerConnectionError`.
ConnectionError = BrokerConnectionError  # noqa: A001


class ConnectionFailed(BrokerConnectionError):
    """Raised when a broker connection could not be opened."""


class ConnectionClosed(BrokerConnectionError):
    """Raised when a broker connection is lost."""


class DecodeError(DjangoActorsError):
    """Raised when a message cannot be decoded.

    ``data`` holds the raw payload and ``error`` the underlying exception.
    """

    def __init__(self, message: str, data: Any = None, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.error = error


class MessageTooLarge(DjangoActorsError):
    """Raised when an encoded message exceeds the configured size limit."""


class InvalidSignature(DecodeError):
    """Raised when a message is unsigned or its signature does not verify
    (signing is on). A :class:`DecodeError`, so brokers dead-letter it."""


class RateLimitExceeded(DjangoActorsError):
    """Raised when a rate limiter could not be acquired."""


class Retry(DjangoActorsError):  # noqa: N818 - dramatiq's name
    """Raise from an actor to have the message retried.

    Parameters:
      message: a description, kept in logs.
      delay: how long to wait before the retry, in milliseconds; the Retries
        middleware's backoff is used when it is ``None``.
    """

    def __init__(self, message: str = "", delay: int | None = None) -> None:
        super().__init__(message)
        self.delay = delay

"""The ResultBackend base class.

A backend stores message results keyed by ``message_id`` and the small
records compositions need (member results, completion sets, claims and end
markers). Subclasses implement the primitive ``_*`` methods; everything else
is shared.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..encoder import Encoder, get_encoder
from .errors import CompositionCancelled, ResultFailure, ResultMissing, ResultTimeout

if TYPE_CHECKING:
    from ..message import Message

#: The default time a blocking get waits, in milliseconds.
DEFAULT_TIMEOUT = 10_000
#: How long stored results live by default, in milliseconds (10 minutes).
DEFAULT_RESULT_TTL = 600_000
#: How long composition records live, in milliseconds (7 days).
COMPOSITION_TTL = 7 * 24 * 3600 * 1000


def unwrap(record: Mapping[str, Any], what: str) -> Any:
    """Return the value of a stored record, raising for stored failures."""
    if "e" in record:
        error = record["e"]
        cls = CompositionCancelled if error.get("type") == "Cancelled" else ResultFailure
        raise cls(
            f"{what} failed: {error.get('type')}: {error.get('message')}",
            error.get("type", ""),
            error.get("message", ""),
        )
    return record.get("r")


def failure_record(exception: BaseException | None, reason: str | None = None) -> dict[str, Any]:
    """The record stored for a failure."""
    if exception is None:
        return {"e": {"type": "Failed", "message": reason or "the message failed"}}
    return {"e": {"type": type(exception).__name__, "message": reason or str(exception)}}


class ResultBackend:
    """Base class for results backends.

    Parameters:
      namespace: prefix of every key.
      encoder: the encoder for stored values (the global one by default).
    """

    #: Whether blocking gets wait without polling.
    blocks_without_polling = False

    def __init__(self, *, namespace: str = "django-actors-results", encoder: Encoder | None = None) -> None:
        self.namespace = namespace
        self.encoder = encoder or get_encoder()

    # Message results ------------------------------------------------------------

    def build_message_key(self, message: Message[Any] | str) -> str:
        """The key a message's result is stored under (its ``message_id``)."""
        message_id = message if isinstance(message, str) else message.message_id
        return f"{self.namespace}:m:{message_id}"

    def get_result(
        self, message: Message[Any] | str, *, block: bool = False, timeout: int | None = None
    ) -> Any:
        """Return a message's result.

        Parameters:
          message: the message, or its id.
          block: wait for the result.
          timeout: how long to wait, in milliseconds (default 10 s).

        Raises:
          ResultMissing: not blocking and no result stored.
          ResultTimeout: blocking and the timeout ran out.
          ResultFailure: the message failed for good.
        """
        key = self.build_message_key(message)
        record = self.wait(key, timeout=timeout) if block else self._get(key)
        if record is None:
            message_id = message if isinstance(message, str) else message.message_id
            if block:
                raise ResultTimeout(f"Timed out waiting for the result of message {message_id}.")
            raise ResultMissing(f"No result yet for message {message_id}.")
        return unwrap(record, f"Message {message if isinstance(message, str) else message.message_id}")

    def wait(self, key: str, *, timeout: int | None = None) -> Any:
        """Wait up to ``timeout`` ms for a record under ``key``; ``None`` if none."""
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        return self._wait(key, max(int(timeout), 0))

    def store_result(self, message: Message[Any], result: Any, ttl: int | None) -> None:
        """Store a message's result for ``ttl`` milliseconds.

        Raises:
          TypeError: the result cannot be encoded.
        """
        self._store_many({self.build_message_key(message): {"r": result}}, ttl or DEFAULT_RESULT_TTL)

    def store_exception(
        self, message: Message[Any], exception: BaseException | None, ttl: int | None, reason: str | None = None
    ) -> None:
        """Store a failure for a message, read back as :class:`ResultFailure`."""
        self._store_many(
            {self.build_message_key(message): failure_record(exception, reason)},
            ttl or DEFAULT_RESULT_TTL,
        )

    # Primitives ---------------------------------------------------------------------

    def _get(self, key: str) -> Any:
        """Return the record under ``key``, or ``None``."""
        return self._get_many([key])[0]

    def _get_many(self, keys: list[str]) -> list[Any]:
        """Return the records under ``keys`` (``None`` where missing), in one round trip."""
        raise NotImplementedError

    def _store_many(self, records: Mapping[str, Any], ttl: int) -> None:
        """Store records (JSON-able values) for ``ttl`` ms, in one round trip, waking waiters."""
        raise NotImplementedError

    def _wait(self, key: str, timeout: int) -> Any:
        """Block up to ``timeout`` ms until ``key`` holds a record; return it or ``None``.

        The base implementation polls with backoff; backends that can wait
        without polling override it.
        """
        deadline = time.monotonic() + timeout / 1000
        pause = 0.005
        while True:
            record = self._get(key)
            if record is not None:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)

    def _add_member(
        self, set_key: str, member: int, ttl: int, records: Mapping[str, Any] | None = None
    ) -> tuple[bool, int]:
        """Store ``records``, add ``member`` to a set, atomically.

        Returns whether the member was new and the set's size after the add.
        """
        raise NotImplementedError

    def _count_members(self, set_keys: list[str]) -> list[int]:
        """The sizes of several sets, in one round trip."""
        raise NotImplementedError

    def _claim(self, key: str, token: str, ttl: int) -> bool:
        """Set ``key`` to ``token`` unless it holds another token.

        Returns ``True`` when this caller holds the claim (new, or already
        its own: a redelivered message may redo its work).
        """
        raise NotImplementedError

    def _delete_many(self, keys: Iterable[str]) -> None:
        """Delete records."""
        raise NotImplementedError

    def flush(self) -> None:
        """Delete everything this backend stored (tests)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""

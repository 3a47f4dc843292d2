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


def unwrap(record: Any, what: str | None, message_id: str | None = None) -> Any:
    """Return the value of a stored record, raising for stored failures.

    A record is ``{"r": value}`` or ``{"e": {"type", "message"}}``; anything
    else is a bare value stored by :meth:`ResultBackend._store` (dramatiq's
    primitive) and returned as it is.

    Parameters:
      record: the stored record.
      what: names the failed thing in the error's text (``"The pipeline
        <id>"``); ``None`` gives dramatiq's text for a message result,
        ``"actor raised <type>: <message>"``.
      message_id: set as the error's ``message_id``.

    Raises:
      ResultFailure: the record is a failure (CompositionCancelled: cancelled).
    """
    if type(record) is not dict or len(record) != 1:
        return record
    if "r" in record:
        return record["r"]
    error = record.get("e")
    if type(error) is not dict:
        return record
    kind, text = error.get("type", ""), error.get("message", "")
    cls = CompositionCancelled if kind == "Cancelled" else ResultFailure
    summary = f"actor raised {kind}: {text}" if what is None else f"{what} failed: {kind}: {text}"
    raise cls(summary, kind, text, message_id=message_id)


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
      use_namespace_prefix_keys: store a message's result under the readable
        key ``{namespace}:{queue_name}:{actor_name}:{message_id}`` (dramatiq's
        option); results are then read with the message, not its id alone.
        By default the key is ``{namespace}:m:{message_id}``.
    """

    #: Whether blocking gets wait without polling.
    blocks_without_polling = False

    def __init__(
        self,
        *,
        namespace: str = "django-actors-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
    ) -> None:
        self.namespace = namespace
        self.encoder = encoder or get_encoder()
        self.use_namespace_prefix_keys = bool(use_namespace_prefix_keys)

    # Message results ------------------------------------------------------------

    def build_message_key(self, message: Message[Any] | str) -> str:
        """The key a message's result is stored under.

        Parameters:
          message: the message, or its id.

        Raises:
          TypeError: ``use_namespace_prefix_keys`` is set and only an id was
            given (the key needs the queue and actor names too).
        """
        if isinstance(message, str):
            if self.use_namespace_prefix_keys:
                raise TypeError(
                    "This results backend uses namespace prefix keys "
                    "(namespace:queue:actor:message_id): pass the message, not only its id."
                )
            return f"{self.namespace}:m:{message}"
        if self.use_namespace_prefix_keys:
            return f"{self.namespace}:{message.queue_name}:{message.actor_name}:{message.message_id}"
        return f"{self.namespace}:m:{message.message_id}"

    def get_result(self, message: Message[Any] | str, *, block: bool = False, timeout: int | None = None) -> Any:
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
        message_id = message if isinstance(message, str) else message.message_id
        if record is None:
            if block:
                raise ResultTimeout(f"Timed out waiting for the result of message {message_id}.")
            raise ResultMissing(f"No result yet for message {message_id}.")
        return unwrap(record, None, message_id)

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

    def _store(self, key: str, value: Any, ttl: int) -> None:
        """Store one bare ``value`` under ``key`` for ``ttl`` ms (dramatiq's
        primitive). :meth:`get_result` returns such a value as it is."""
        self._store_many({key: value}, ttl)

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

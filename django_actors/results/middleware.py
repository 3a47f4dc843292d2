"""The Results middleware: store what actors return."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ActorNotFound, DecodeError, MessageTooLarge
from ..middleware.middleware import Middleware, SkipMessage, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..message import Message
    from .backend import ResultBackend

logger = logging.getLogger(__name__)


class Results(Middleware):
    """Store actor results in a backend, keyed by ``message_id``.

    Parameters:
      backend: where results go.
      store_results: the default for the ``store_results`` actor option.
      result_ttl: how long results live, in milliseconds (default 10 min).

    A message that fails for good stores its failure, so a caller waiting on
    its result gets :class:`ResultFailure` instead of waiting forever. That
    holds for dead-lettered messages whose actor is unknown too. A message
    skipped by a middleware (``SkipMessage``) without being failed stores
    ``None``; one skipped and failed stores a ``SkipMessage`` failure.

    An actor that returns a value without ``store_results`` gets a warning
    (once per actor) that the value was discarded, unless the message is a
    pipeline step (its result goes to the next step).
    """

    actor_options = {"store_results", "result_ttl"}

    def __init__(
        self,
        *,
        backend: ResultBackend | None = None,
        store_results: bool = False,
        result_ttl: int | None = None,
    ) -> None:
        self.backend = backend
        self.store_results = store_results
        self.result_ttl = result_ttl
        self._warned: set[str] = set()

    def _wants(self, broker: Broker, message: MessageProxy) -> bool:
        return self.backend is not None and bool(get_option(broker, message, "store_results", self.store_results))

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is not None:
            return
        if not self._wants(broker, message):
            if result is not None and self.backend is not None:
                self._warn_discarded(message)
            return
        assert self.backend is not None
        ttl = get_option(broker, message, "result_ttl", self.result_ttl)
        try:
            self.backend.store_result(message.message, result, ttl)
        except TypeError as exc:
            logger.error("Result of message %s cannot be encoded: %s", message.message_id, exc)
            self.backend.store_exception(message.message, exc, ttl, f"the result cannot be encoded: {exc}")

    def _warn_discarded(self, message: MessageProxy) -> None:
        options = message.options
        if "pipe_target" in options or "composition" in options or message.actor_name in self._warned:
            return  # a pipeline step hands its result on
        self._warned.add(message.actor_name)
        logger.warning(
            "Actor %r returned a value that is not None, but its store_results option is not set, "
            "so the value has been discarded. Set store_results=True on the actor to keep it.",
            message.actor_name,
        )

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if self.backend is None or not self._wants(broker, message):
            return
        if message.failed:
            if message.exception is None:
                # Read back as ResultFailure(orig_exc_type="SkipMessage"), stored by after_nack.
                message.stuff_exception(SkipMessage(message.fail_reason or "the message was skipped"))
            return
        if "composition" in message.options:
            return  # a skipped composition member's record is stored by the composition (cancelled)
        ttl = get_option(broker, message, "result_ttl", self.result_ttl)
        self.backend.store_result(message.message, None, ttl)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        if self.backend is None:
            return
        exception = getattr(message, "exception", None)
        # Messages that could not even start: whoever waits on them is told.
        unknown = isinstance(exception, ActorNotFound | DecodeError | MessageTooLarge)
        if unknown or self._wants(broker, message):
            ttl = get_option(broker, message, "result_ttl", self.result_ttl)
            # With an exception, its own text is the message (ResultFailure.orig_exc_msg).
            reason = None if exception is not None else getattr(message, "fail_reason", None)
            self.backend.store_exception(_plain(message), exception, ttl, reason)


def _plain(message: Any) -> Message[Any]:
    """The message itself, from a MessageProxy or a Message."""
    plain: Message[Any] = getattr(message, "message", message)
    return plain

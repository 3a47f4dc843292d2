"""The Results middleware: store what actors return."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ActorNotFound, DecodeError, MessageTooLarge
from ..middleware.middleware import Middleware, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
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
    holds for dead-lettered messages whose actor is unknown too.
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

    def _wants(self, broker: Broker, message: MessageProxy) -> bool:
        return self.backend is not None and bool(get_option(broker, message, "store_results", self.store_results))

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is not None or not self._wants(broker, message):
            return
        assert self.backend is not None
        ttl = get_option(broker, message, "result_ttl", self.result_ttl)
        try:
            self.backend.store_result(message.message, result, ttl)
        except TypeError as exc:
            logger.error("Result of message %s cannot be encoded: %s", message.message_id, exc)
            self.backend.store_exception(message.message, exc, ttl, f"the result cannot be encoded: {exc}")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        if self.backend is None:
            return
        # Messages that could not even start: whoever waits on them is told.
        unknown = isinstance(message.exception, ActorNotFound | DecodeError | MessageTooLarge)
        if unknown or self._wants(broker, message):
            ttl = get_option(broker, message, "result_ttl", self.result_ttl)
            # With an exception, its own text is the message (ResultFailure.orig_exc_msg).
            reason = None if message.exception is not None else message.fail_reason
            self.backend.store_exception(message.message, message.exception, ttl, reason)

"""DjangoSignals: send the Django signals of :mod:`django_actors.signals`."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

from .. import signals
from .middleware import Middleware

if TYPE_CHECKING:
    from django.dispatch import Signal

    from ..actor import Actor
    from ..broker import Broker, MessageProxy
    from ..message import Message

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Attempt:
    """A message being processed in this process."""

    proxy: MessageProxy
    retries: int
    retried: bool = False


def _send(signal: Signal, name: str, sender: Actor[Any, Any] | None, **kwargs: Any) -> None:
    for receiver, response in signal.send_robust(sender, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "A receiver of %s (%r) raised; the message is not affected.",
                name,
                receiver,
                exc_info=response,
            )


class DjangoSignals(Middleware):
    """Send ``message_enqueued``, ``message_started``, ``message_succeeded``,
    ``message_retried`` and ``message_failed`` (see :mod:`django_actors.signals`).

    Place it after the middleware that may skip a message (so a skipped
    message is not reported as started); the default middleware list does.
    A retry is recognised when a message being processed here is enqueued
    again with a higher ``options["retries"]``, which is what the Retries
    middleware does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: dict[str, _Attempt] = {}

    @staticmethod
    def _actor(broker: Broker, actor_name: str) -> Actor[Any, Any] | None:
        return broker.actors.get(actor_name) if actor_name else None

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        actor = self._actor(broker, message.actor_name)
        _send(signals.message_enqueued, "message_enqueued", actor, broker=broker, message=message, delay=delay)
        with self._lock:
            attempt = self._attempts.get(message.message_id)
            retried = attempt is not None and message.options.get("retries", 0) > attempt.retries
            if attempt is not None and retried:
                attempt.retried = True
        if attempt is not None and retried:
            _send(
                signals.message_retried,
                "message_retried",
                actor,
                broker=broker,
                message=message,
                exception=attempt.proxy.exception,
                delay=delay,
            )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._lock:
            self._attempts[message.message_id] = _Attempt(message, int(message.options.get("retries", 0)))
        actor = self._actor(broker, message.actor_name)
        _send(signals.message_started, "message_started", actor, broker=broker, message=message.message)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            actor = self._actor(broker, message.actor_name)
            _send(
                signals.message_succeeded,
                "message_succeeded",
                actor,
                broker=broker,
                message=message.message,
                result=result,
            )

    def _forget(self, message: MessageProxy) -> _Attempt | None:
        with self._lock:
            return self._attempts.pop(message.message_id, None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._forget(message)

    def _failed(self, broker: Broker, message: MessageProxy) -> None:
        actor = self._actor(broker, message.actor_name)
        _send(
            signals.message_failed,
            "message_failed",
            actor,
            broker=broker,
            message=message.message,
            exception=message.exception,
            reason=message.fail_reason or "the message failed",
        )

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        attempt = self._forget(message)
        # It raised, was not dead-lettered and no retry was scheduled: it
        # will not run again (e.g. no Retries middleware installed).
        if message.exception is not None and not (attempt is not None and attempt.retried):
            self._failed(broker, message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._forget(message)
        self._failed(broker, message)

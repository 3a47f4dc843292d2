"""Retries: run failed messages again, with exponential backoff and jitter."""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import Retry
from ..message import Message
from .middleware import Middleware, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

logger = logging.getLogger(__name__)

#: How much of the traceback is kept in the message options.
_TRACEBACK_LIMIT = 4000


def compute_backoff(
    attempts: int, *, min_backoff: int, max_backoff: int, jitter: bool = True
) -> int:
    """Return the delay before retry number ``attempts + 1``, in milliseconds.

    The delay doubles with each attempt from ``min_backoff``, is capped at
    ``max_backoff``, and with ``jitter`` is drawn uniformly from the upper
    half of that value so retries of many messages spread out.
    """
    exponent = min(attempts, 62)
    backoff = min(min_backoff * (2**exponent), max_backoff)
    if jitter:
        backoff = int(random.uniform(backoff / 2, backoff))
    return max(int(backoff), 0)


class Retries(Middleware):
    """Retry messages whose actor raised.

    Parameters:
      max_retries: how many times to retry (default 20).
      min_backoff: the first delay, in milliseconds (default 15 s).
      max_backoff: the largest delay, in milliseconds (default 7 days).
      retry_when: ``f(retries, exception) -> bool``; when given it decides
        instead of ``max_retries``.

    Actor options: the above plus ``throws`` (exception classes that fail the
    message at once without a retry or an error log) and
    ``on_retry_exhausted`` (an actor, or its name, sent
    ``(message_data, {"retries": n, "max_retries": m})`` when retries run out).
    Raise :class:`~django_actors.Retry` with ``delay=`` to choose the delay.
    """

    actor_options = {"max_retries", "min_backoff", "max_backoff", "retry_when", "throws", "on_retry_exhausted"}

    def __init__(
        self,
        *,
        max_retries: int = 20,
        min_backoff: int = 15_000,
        max_backoff: int = 7 * 24 * 3600 * 1000,
        retry_when: Callable[[int, BaseException], bool] | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.retry_when = retry_when

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None or message.failed:
            return
        throws = get_option(broker, message, "throws")
        if throws and isinstance(exception, throws):
            logger.info("Message %s raised %r, which it throws: not retried.", message.message_id, exception)
            message.fail()
            return

        retries = message.options.get("retries", 0)
        max_retries = get_option(broker, message, "max_retries", self.max_retries)
        retry_when = get_option(broker, message, "retry_when", self.retry_when)
        should_retry = bool(retry_when(retries, exception)) if retry_when is not None else retries < max_retries
        if not should_retry:
            logger.warning("Retries exceeded for message %s.", message.message_id)
            message.fail()
            target = get_option(broker, message, "on_retry_exhausted")
            if target:
                name = getattr(target, "actor_name", target)
                exhausted_actor = broker.get_actor(name)
                exhausted_actor.send(
                    message.message.asdict(), {"retries": retries, "max_retries": max_retries}
                )
            return

        if isinstance(exception, Retry) and exception.delay is not None:
            delay = int(exception.delay)
        else:
            delay = compute_backoff(
                retries,
                min_backoff=get_option(broker, message, "min_backoff", self.min_backoff),
                max_backoff=get_option(broker, message, "max_backoff", self.max_backoff),
            )
        options = dict(message.options)
        options.pop("eta", None)
        options["retries"] = retries + 1
        options["traceback"] = "".join(
            traceback.format_exception(type(exception), exception, exception.__traceback__)
        )[-_TRACEBACK_LIMIT:]
        retry: Message[Any] = message.message.copy(options=options)
        logger.info("Retrying message %s in %d ms.", message.message_id, delay)
        broker.enqueue(retry, delay=delay)

"""Pipelines: drive pipelines and groups as their members finish.

The composition logic lives in :mod:`django_actors.composition`; this
middleware calls it from the worker's hooks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .middleware import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

logger = logging.getLogger(__name__)


class Pipelines(Middleware):
    """Advance compositions: send a pipeline's next step, count a group's
    members, fire completion and failure callbacks, skip cancelled members.

    It also warns (once per actor) when an actor that is not a pipeline step
    returns a value on a broker without the Results middleware: the value is
    discarded.
    """

    actor_options = {"pipe_ignore", "pipe_target"}

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        from ..composition import check_cancelled

        check_cancelled(broker, message)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is not None or message.failed:
            return  # a failed message goes no further (after_nack marks its compositions)
        options = message.options
        if "pipe_target" not in options and "composition" not in options:
            if result is not None and message.actor_name not in self._warned:
                self._warn_discarded(broker, message)
            return
        from ..composition import on_message_done

        on_message_done(broker, message, result)

    def _warn_discarded(self, broker: Broker, message: MessageProxy) -> None:
        if broker.has_results_backend():
            return  # the Results middleware warns if it does not store the value
        self._warned.add(message.actor_name)
        logger.warning(
            "Actor %r returned a value that is not None, but the broker has no Results middleware, "
            "so the value has been discarded. Consider adding the Results middleware to keep it.",
            message.actor_name,
        )

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        from ..composition import on_message_failed

        on_message_failed(broker, message)

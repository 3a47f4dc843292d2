"""Pipelines: drive pipelines and groups as their members finish.

The composition logic lives in :mod:`django_actors.composition`; this
middleware calls it from the worker's hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .middleware import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy


class Pipelines(Middleware):
    """Advance compositions: send a pipeline's next step, count a group's
    members, fire completion and failure callbacks, skip cancelled members."""

    actor_options = {"pipe_ignore", "pipe_target"}

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        from ..composition import check_cancelled

        check_cancelled(broker, message)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is not None:
            return
        from ..composition import on_message_done

        on_message_done(broker, message, result)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        from ..composition import on_message_failed

        on_message_failed(broker, message)

"""Callbacks: send a message to another actor when one succeeds or fails."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .middleware import Middleware, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy


class Callbacks(Middleware):
    """Run ``on_success`` / ``on_failure`` actors.

    ``on_success`` receives ``(message_data, result)``; ``on_failure``
    receives ``(message_data, {"type": ..., "message": ...})`` once the
    message failed for good (after its retries). Options name an actor or
    are the actor itself.
    """

    actor_options = {"on_success", "on_failure"}

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            target = get_option(broker, message, "on_success")
            if target:
                _actor_for(broker, target).send(message.message.asdict(), result)
        elif message.failed:
            target = get_option(broker, message, "on_failure")
            if target:
                details = {"type": type(exception).__name__, "message": str(exception)}
                _actor_for(broker, target).send(message.message.asdict(), details)


def _actor_for(broker: Broker, target: Any) -> Any:
    name = getattr(target, "actor_name", target)
    return broker.get_actor(name)

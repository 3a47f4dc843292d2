"""Callbacks: send a message to another actor when one succeeds or fails."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .middleware import Middleware, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy


class Callbacks(Middleware):
    """Run ``on_success`` / ``on_failure`` actors.

    ``on_success`` receives ``(message_data, result)``; ``on_failure``
    receives ``(message_data, {"type": ..., "message": ...})`` each time the
    actor raises, as in dramatiq. Its ``message_data["options"]["retries"]``
    counts the failures so far, this one included (an exception the actor
    ``throws`` is not counted), so the last failure of an actor with
    ``max_retries=n`` carries ``n + 1``. For one call once retries are
    exhausted, use the Retries middleware's ``on_retry_exhausted``. Options
    name an actor or are the actor itself.
    """

    actor_options = {"on_success", "on_failure"}

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            target = get_option(broker, message, "on_success")
            if target:
                _actor_for(broker, target).send(message.message.asdict(), result)
            return
        target = get_option(broker, message, "on_failure")
        if target:
            data = message.message.asdict()
            throws = get_option(broker, message, "throws")
            if not (throws and isinstance(exception, throws)):
                # Count this failure, as the retry the Retries middleware sends will.
                data["options"] = {**data["options"], "retries": data["options"].get("retries", 0) + 1}
            details = {"type": type(exception).__name__, "message": str(exception)}
            _actor_for(broker, target).send(data, details)


def _actor_for(broker: Broker, target: Any) -> Any:
    name = getattr(target, "actor_name", target)
    return broker.get_actor(name)

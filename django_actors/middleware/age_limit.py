"""AgeLimit: drop messages that waited too long before a worker got to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..message import current_millis
from .middleware import Middleware, SkipMessage, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy


class AgeLimit(Middleware):
    """Fail messages older than ``max_age`` milliseconds instead of running them.

    Parameters:
      max_age: the default limit in milliseconds; ``None`` means no limit.
        Actors and messages override it with the ``max_age`` option.
    """

    actor_options = {"max_age"}

    def __init__(self, *, max_age: int | None = None) -> None:
        self.max_age = max_age

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        max_age = get_option(broker, message, "max_age", self.max_age)
        if not max_age:
            return
        age = current_millis() - message.message_timestamp
        if age > max_age:
            # dramatiq's exception text, which users match on; the detail
            # goes into the failure reason (dead letter, logs, the admin).
            skipped = SkipMessage("Message age limit exceeded")
            message.fail(f"message is {age} ms old, over its max_age of {max_age} ms")
            message.stuff_exception(skipped)
            raise skipped

"""CurrentMessage: let an actor see the message it is processing."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from .middleware import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("django_actors_current_message", default=None)


class CurrentMessage(Middleware):
    """Make the message being processed available to the actor.

    ``CurrentMessage.get_current_message()`` returns it (or ``None`` outside
    an actor). Works for async actors too.
    """

    @classmethod
    def get_current_message(cls) -> MessageProxy | None:
        """Return the message being processed in this context, or ``None``.

        It is the worker's :class:`~django_actors.MessageProxy` (as in
        dramatiq): it reads like the :class:`~django_actors.Message`
        (``message_id``, ``args``, ``options``, ``asdict()``...) and its
        ``message`` attribute is the message itself.
        """
        proxy: MessageProxy | None = _current.get()
        return proxy

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        _current.set(message)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        _current.set(None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        _current.set(None)

"""The Middleware base class: named hooks around every broker and worker event."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import DjangoActorsError

if TYPE_CHECKING:
    from ..actor import Actor
    from ..broker import Broker, MessageProxy
    from ..message import Message
    from ..worker import Worker


class MiddlewareError(DjangoActorsError):
    """Base class for middleware errors."""


class SkipMessage(MiddlewareError):  # noqa: N818 - dramatiq's name
    """Raise from ``before_process_message`` to skip a message.

    The message is acked without running the actor and ``after_skip_message``
    hooks run.
    """


class Middleware:
    """Base class for middleware. Override the hooks you need.

    ``before_*`` hooks run in middleware order and an exception from one stops
    the operation; ``after_*`` hooks run in reverse order.
    """

    #: The actor options this middleware understands.
    actor_options: set[str] = set()

    @property
    def forks(self) -> list[Callable[[], int]]:
        """Functions to run in forked processes next to the workers."""
        return []

    # Broker-side hooks.
    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None: ...
    def after_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None: ...
    def before_declare_queue(self, broker: Broker, queue_name: str) -> None: ...
    def after_declare_queue(self, broker: Broker, queue_name: str) -> None: ...
    def after_declare_delay_queue(self, broker: Broker, queue_name: str) -> None: ...
    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None: ...
    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None: ...
    def before_delay_message(self, broker: Broker, message: Message[Any]) -> None: ...

    # Worker-side hooks.
    def before_ack(self, broker: Broker, message: MessageProxy) -> None: ...
    def after_ack(self, broker: Broker, message: MessageProxy) -> None: ...
    def before_nack(self, broker: Broker, message: MessageProxy) -> None: ...
    def after_nack(self, broker: Broker, message: MessageProxy) -> None: ...
    def before_process_message(self, broker: Broker, message: MessageProxy) -> None: ...
    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None: ...
    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None: ...

    # Lifecycle hooks.
    def after_process_boot(self, broker: Broker) -> None: ...
    def before_process_stop(self, broker: Broker) -> None: ...
    def after_process_stop(self, broker: Broker) -> None: ...
    def before_worker_boot(self, broker: Broker, worker: Worker) -> None: ...
    def after_worker_boot(self, broker: Broker, worker: Worker) -> None: ...
    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None: ...
    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None: ...
    def after_worker_thread_boot(self, broker: Broker, thread: Any) -> None: ...
    def before_worker_thread_shutdown(self, broker: Broker, thread: Any) -> None: ...
    def before_consumer_thread_shutdown(self, broker: Broker, thread: Any) -> None: ...


def get_option(broker: Broker, message: Any, name: str, default: Any = None) -> Any:
    """Read an option: the message's, else its actor's, else ``default``."""
    options = message.options
    if name in options:
        return options[name]
    actor = broker.actors.get(message.actor_name)
    if actor is not None and name in actor.options:
        return actor.options[name]
    return default

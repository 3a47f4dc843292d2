"""Actors: functions that run in workers, and the ``actor`` decorator."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .broker import Broker, get_broker, validate_queue_name
from .message import Message

if TYPE_CHECKING:
    from .composition import pipeline

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, Actor[Any, Any]] = {}
#: Options that name another actor; an Actor given for them is sent as its name.
_CALLBACK_OPTIONS = ("on_success", "on_failure", "on_retry_exhausted")
_registry_lock = threading.Lock()


def registered_actors() -> list[Actor[Any, Any]]:
    """Return every actor defined so far, the latest definition of each name."""
    with _registry_lock:
        return list(_registry.values())


def _known_actor_options() -> set[str]:
    """The options declared by any middleware class imported so far."""
    from .middleware.middleware import Middleware

    options: set[str] = set()
    pending = [Middleware]
    while pending:
        cls = pending.pop()
        options |= set(getattr(cls, "actor_options", ()))
        pending.extend(cls.__subclasses__())
    return options


class Actor(Generic[P, R]):
    """A function that can be sent to a queue and run by a worker.

    Parameters:
      fn: the function (sync or ``async def``).
      broker: the broker to use; ``None`` follows the global broker.
      actor_name: the actor's name, unique per broker.
      queue_name: the queue its messages go to.
      priority: lower numbers run first inside a worker.
      options: actor options, each declared by an installed middleware.
    """

    def __init__(
        self,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        broker: Broker | None,
        actor_name: str,
        queue_name: str,
        priority: int,
        options: dict[str, Any],
    ) -> None:
        if not isinstance(actor_name, str) or not actor_name:
            raise ValueError(f"Invalid actor name {actor_name!r}: use a non-empty string.")
        validate_queue_name(queue_name)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"Invalid priority {priority!r} for actor {actor_name!r}: use an int.")
        self.logger = logging.getLogger(f"{fn.__module__}.{actor_name}")
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.actor_name = actor_name
        self.queue_name = queue_name
        self.priority = priority
        self.options = options
        self.explicit_broker = broker
        if broker is not None:
            broker.declare_actor(self)

    @property
    def broker(self) -> Broker:
        """The broker this actor sends to (the global one unless given)."""
        broker = self.explicit_broker
        if broker is not None:
            return broker
        broker = get_broker()
        if broker.actors.get(self.actor_name) is not self:
            broker.declare_actor(self)
        return broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        self.explicit_broker = broker
        broker.declare_actor(self)

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """Build a message for this actor, without sending it."""
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(
        self,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Message[R]:
        """Build a message with per-message options, without sending it."""
        if options:
            if "delay" in options:
                raise TypeError("'delay' is an argument of send_with_options, not a message option.")
            for name in _CALLBACK_OPTIONS:
                value = options.get(name)
                if isinstance(value, Actor):
                    options[name] = value.actor_name  # messages carry names, not objects
                elif value is not None and not isinstance(value, str):
                    raise TypeError(
                        f"Option {name!r} must be an actor or an actor name, not {type(value).__name__}."
                    )
        return Message(
            queue_name=self.queue_name,
            actor_name=self.actor_name,
            args=tuple(args),
            kwargs=kwargs or {},
            options=options,
        )

    def send(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """Send a message for this actor.

        Raises:
          TypeError: an argument cannot be encoded; nothing is enqueued.
        """
        if type(self).send_with_options is not Actor.send_with_options:  # a subclass's own
            return self.send_with_options(args=args, kwargs=kwargs)
        # send_with_options() without options or delay, minus its checks.
        message: Message[R] = Message(
            queue_name=self.queue_name, actor_name=self.actor_name, args=args, kwargs=kwargs, options={}
        )
        return self.broker.enqueue(message)

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        delay: int | None = None,
        **options: Any,
    ) -> Message[R]:
        """Send a message with options, after ``delay`` milliseconds when given."""
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise ValueError(f"delay must be a non-negative number of milliseconds, not {delay!r}.")
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        return self.broker.enqueue(message, delay=int(delay) if delay else None)

    def send_on_commit(self, *args: Any, using: str | None = None, **kwargs: Any) -> Message[R]:
        """Send a message once the current database transaction commits.

        The arguments are encoded at once, so a bad argument fails here; the
        message is enqueued only if the transaction commits.

        Parameters:
          using: the database alias whose transaction to follow.
        """
        return self.send_with_options_on_commit(args=args, kwargs=kwargs, using=using)

    def send_with_options_on_commit(
        self,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        delay: int | None = None,
        using: str | None = None,
        **options: Any,
    ) -> Message[R]:
        """:meth:`send_with_options`, deferred until the transaction commits."""
        from django.db import transaction

        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise ValueError(f"delay must be a non-negative number of milliseconds, not {delay!r}.")
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        message.encode()  # fail now, not at commit time
        broker = self.broker
        delay = int(delay) if delay else None
        transaction.on_commit(lambda: broker.enqueue(message, delay=delay), using=using)
        return message

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the actor's function in this process (no broker involved).

        An async actor is run to completion when no event loop is running in
        this thread; inside a running loop its coroutine is returned.
        """
        start = time.perf_counter()
        try:
            result = self.fn(*args, **kwargs)
            if self.is_async:
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    return asyncio.run(result)  # type: ignore[arg-type]
            return result  # type: ignore[return-value]
        finally:
            self.logger.debug("Completed %s in %.2fms.", self.actor_name, (time.perf_counter() - start) * 1000)

    def __or__(self, other: Any) -> pipeline:
        raise TypeError("Compose messages, not actors: use actor.message(...) | other.message(...).")

    def __repr__(self) -> str:
        return f"Actor({self.fn!r}, queue_name={self.queue_name!r}, actor_name={self.actor_name!r})"

    def __str__(self) -> str:
        return f"Actor({self.actor_name})"


@overload
def actor(fn: Callable[P, R], **kw: Any) -> Actor[P, R]: ...


@overload
def actor(fn: None = None, **kw: Any) -> Callable[[Callable[P, R]], Actor[P, R]]: ...


def actor(
    fn: Callable[..., Any] | None = None,
    *,
    actor_class: type[Actor[Any, Any]] = Actor,
    actor_name: str | None = None,
    queue_name: str = "default",
    priority: int = 0,
    broker: Broker | None = None,
    **options: Any,
) -> Any:
    """Declare an actor. Use bare (``@actor``) or with options (``@actor(...)``).

    Parameters:
      actor_class: the class to build (a subclass of :class:`Actor`).
      actor_name: defaults to the function's name.
      queue_name: the queue to send to (default ``"default"``).
      priority: lower numbers run first inside a worker (default 0).
      broker: a specific broker; by default the global one, bound lazily.
      options: actor options declared by middleware (``max_retries``,
        ``time_limit``, ``store_results``...).

    Raises:
      ValueError: an option no middleware declares, or a bad name or queue.
    """

    def decorator(fn: Callable[..., Any]) -> Actor[Any, Any]:
        name = fn.__name__ if actor_name is None else actor_name
        known = broker.actor_options if broker is not None else _known_actor_options()
        invalid = set(options) - known
        if invalid:
            raise ValueError(
                f"Actor {name!r} uses option(s) that no middleware declares: "
                f"{', '.join(sorted(invalid))}."
            )
        instance = actor_class(
            fn,
            broker=broker,
            actor_name=name,
            queue_name=queue_name,
            priority=priority,
            options=options,
        )
        if broker is None:
            from . import broker as broker_module

            current = broker_module._broker
            if current is not None:
                current.declare_actor(instance)
        # Registered once declared, so an actor the broker rejected is not kept.
        with _registry_lock:
            _registry[name] = instance
        return instance

    if fn is None:
        return decorator
    return decorator(fn)


class _GenericActorMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        meta = attrs.pop("Meta", None)
        cls = super().__new__(mcs, name, bases, attrs)
        inherited = dict(getattr(cls, "_meta_options", {}))
        inherited.pop("abstract", None)
        if meta is not None:
            inherited.update({k: v for k, v in vars(meta).items() if not k.startswith("__")})
        cls._meta_options = inherited  # type: ignore[attr-defined]
        if inherited.get("abstract"):
            return cls
        perform = getattr(cls, "perform", None)
        if perform is None or perform is GenericActor.perform:
            raise TypeError(f"{name} must define perform(), or set abstract = True in its Meta.")
        options = dict(inherited)
        options.setdefault("actor_name", name)
        instance = cls()
        # The bound perform is the actor's function, so an async perform runs as async.
        return actor(instance.perform, **options)


class GenericActor(metaclass=_GenericActorMeta):
    """Base class for class-based actors.

    Subclasses define ``perform(self, ...)`` and may carry a ``Meta`` inner
    class with actor options (``queue_name``, ``max_retries``...). A ``Meta``
    with ``abstract = True`` makes a base class that is not itself an actor.
    The subclass name is bound to the resulting :class:`Actor`.
    """

    class Meta:
        abstract = True

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.perform(*args, **kwargs)

"""Actors: functions that run in workers, and the ``actor`` decorator."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .broker import Broker, get_broker, validate_queue_name
from .message import Message, delay_ms

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

    #: The broker the ``actor`` decorator declared this actor on, if one existed then.
    _defined_on: weakref.ref[Broker] | None = None

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
        # A function defined where there is no module (a shell, exec) logs under "_".
        self.logger = logging.getLogger(f"{getattr(fn, '__module__', None) or '_'}.{actor_name}")
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
        """Build a message with per-message options, without sending it.

        A ``delay`` option (milliseconds or a timedelta) is kept, in
        milliseconds, for pipelines and groups, which wait that long before
        sending the message; to delay a single message, pass ``delay`` to
        :meth:`send_with_options` or ``broker.enqueue``.

        Raises:
          ValueError: ``delay`` is negative or not a duration.
        """
        if options:
            if "delay" in options:
                delay = delay_ms(options["delay"])
                if delay is None:
                    del options["delay"]
                else:
                    options["delay"] = delay
            for name in _CALLBACK_OPTIONS:
                value = options.get(name)
                if isinstance(value, GenericActor):
                    value = value.__actor__
                if isinstance(value, Actor):
                    options[name] = value.actor_name  # messages carry names, not objects
                elif value is not None and not isinstance(value, str):
                    raise TypeError(f"Option {name!r} must be an actor or an actor name, not {type(value).__name__}.")
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
        delay: int | datetime.timedelta | None = None,
        **options: Any,
    ) -> Message[R]:
        """Send a message with options.

        Parameters:
          delay: wait at least this long before the message runs: milliseconds,
            or a :class:`datetime.timedelta`.

        Raises:
          ValueError: ``delay`` is negative or not a duration.
          TypeError: an argument cannot be encoded; nothing is enqueued.
        """
        millis = delay_ms(delay) if delay is not None else None
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        return self.broker.enqueue(message, delay=millis)

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
        delay: int | datetime.timedelta | None = None,
        using: str | None = None,
        **options: Any,
    ) -> Message[R]:
        """:meth:`send_with_options`, deferred until the transaction commits."""
        from django.db import transaction

        millis = delay_ms(delay) if delay is not None else None
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        message.encode()  # fail now, not at commit time
        broker = self.broker
        transaction.on_commit(lambda: broker.enqueue(message, delay=millis), using=using)
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
      ValueError: an option no middleware declares, a bad name or queue, or
        a name already taken by another actor on the same broker.
    """

    def decorator(fn: Callable[..., Any]) -> Actor[Any, Any]:
        from . import broker as broker_module

        name = fn.__name__ if actor_name is None else actor_name
        known = broker.actor_options if broker is not None else _known_actor_options()
        invalid = set(options) - known
        if invalid:
            raise ValueError(
                f"Actor {name!r} uses option(s) that no middleware declares: {', '.join(sorted(invalid))}."
            )
        # Two actors defined with one name on one broker: messages would run the
        # wrong one. An actor carried over from an earlier global broker by
        # set_broker() (a test's, say) is replaced instead.
        target = broker if broker is not None else broker_module._broker
        existing = target.actors.get(name) if target is not None else None
        if existing is not None and existing._defined_on is not None and existing._defined_on() is target:
            raise ValueError(f"An actor named {name!r} is already registered.")
        instance = actor_class(
            fn,
            broker=broker,
            actor_name=name,
            queue_name=queue_name,
            priority=priority,
            options=options,
        )
        if broker is None and target is not None:
            target.declare_actor(instance)
        if target is not None:
            instance._defined_on = weakref.ref(target)
        # Registered once declared, so an actor the broker rejected is not kept.
        with _registry_lock:
            _registry[name] = instance
        return instance

    if fn is None:
        return decorator
    return decorator(fn)


class _GenericActorMeta(type):
    """Turns each concrete subclass of :class:`GenericActor` into an instance
    of itself bound to an actor (see there)."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        cls = super().__new__(mcs, name, bases, attrs)
        # Options: the parents' (minus "abstract"), then this class's own Meta.
        inherited = dict(getattr(cls, "_meta_options", {}))
        inherited.pop("abstract", None)
        meta = attrs.get("Meta")
        if meta is not None:
            inherited.update({k: v for k, v in vars(meta).items() if not k.startswith("_")})
        cls._meta_options = inherited  # type: ignore[attr-defined]
        if inherited.get("abstract"):
            return cls
        options = dict(inherited)
        decorator = options.pop("actor", None)
        instance = cls()
        if decorator is None:
            # The bound perform is the actor's function, so an async perform runs as async.
            options.setdefault("actor_name", name)
            bound = actor(instance.perform, **options)
        else:  # a custom decorator (Meta.actor) is given the instance itself
            bound = decorator(instance, **options)
        instance.__dict__["__actor__"] = bound
        return instance


class GenericActor(metaclass=_GenericActorMeta):
    """Base class for class-based actors.

    Subclasses define ``perform(self, ...)`` and may carry a ``Meta`` inner
    class with actor options (``queue_name``, ``max_retries``...; ``actor``
    names a decorator to use instead of :func:`actor`). A ``Meta`` with
    ``abstract = True`` makes a base class that is not itself an actor; its
    options are inherited.

    The name of a concrete subclass is bound to an instance of it: calling
    it runs ``perform`` in this process, ``__actor__`` is its
    :class:`Actor`, and attributes the class does not define come from that
    actor (``send``, ``message``, ``queue_name``, ``options``...). Class
    attributes and helper methods stay reachable.
    """

    class Meta:
        abstract = True

    @property
    def __name__(self) -> str:  # the actor's default name, as for a function
        name: str = type(self).__qualname__.rpartition(".")[2]
        return name

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        """The actor's code; subclasses override it.

        Raises:
          NotImplementedError: the subclass does not define it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement perform()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``perform`` in this process (an async one to completion when no
        event loop is running in this thread)."""
        result = self.perform(*args, **kwargs)
        if inspect.iscoroutine(result):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(result)
        return result

    def __getattr__(self, name: str) -> Any:
        bound = self.__dict__.get("__actor__")
        if bound is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(bound, name)

    def __repr__(self) -> str:
        bound = self.__dict__.get("__actor__")  # not its repr: that shows perform, bound to self
        return f"<{type(self).__qualname__} actor_name={getattr(bound, 'actor_name', None)!r}>"

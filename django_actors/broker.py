"""The Broker base class, consumers, message proxies and the global broker."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ActorNotFound, DjangoActorsError, MessageTooLarge
from .message import Message, current_millis

if TYPE_CHECKING:
    from .actor import Actor
    from .middleware.middleware import Middleware
    from .results.backend import ResultBackend

logger = logging.getLogger(__name__)

#: What a queue name may contain: letters, digits, ``_``, ``-`` and ``.``.
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

_HOOKS = (
    "declare_actor", "declare_queue", "declare_delay_queue", "enqueue", "delay_message",
    "ack", "nack", "process_message", "skip_message", "process_boot", "process_stop",
    "worker_boot", "worker_shutdown", "worker_thread_boot", "worker_thread_shutdown",
    "consumer_thread_shutdown",
)  # fmt: skip


class NoResultsBackend(DjangoActorsError, RuntimeError):
    """Raised when results are asked of a broker that has no Results middleware."""


class BeforeAndAfter(ValueError, AssertionError):  # noqa: N818 - says what went wrong
    """Raised by :meth:`Broker.add_middleware` given both ``before`` and ``after``.

    A ``ValueError`` like the other bad arguments, and an ``AssertionError``
    as dramatiq documents for this case.
    """


def validate_queue_name(queue_name: object) -> str:
    """Return ``queue_name`` if it is a valid queue name, else raise ``ValueError``."""
    if not isinstance(queue_name, str) or not QUEUE_NAME_RE.fullmatch(queue_name):  # "$" allows a final "\n"
        raise ValueError(f"Invalid queue name {queue_name!r}: use 1 to 128 letters, digits, '_', '-' or '.'.")
    return queue_name


def default_middleware() -> list[Middleware]:
    """Return new instances of the middleware every broker gets by default."""
    from .middleware import (
        AgeLimit,
        Callbacks,
        Pipelines,
        Retries,
        ShutdownNotifications,
        TimeLimit,
    )

    return [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries()]


class Broker:
    """Base class for brokers.

    Parameters:
      middleware: the middleware to use; :func:`default_middleware` when ``None``.
      max_message_size: the largest encoded message accepted, in bytes, at send
        and at receive.
    """

    #: Whether ``enqueue_many`` sends a batch in one round trip.
    supports_batch_enqueue = False

    def __init__(
        self,
        middleware: Iterable[Middleware] | None = None,
        *,
        max_message_size: int = 4 * 1024 * 1024,
    ) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.actors: dict[str, Actor[Any, Any]] = {}
        self.middleware: list[Middleware] = []
        self.actor_options: set[str] = set()
        self.max_message_size = max_message_size
        self._hooks: dict[str, list[Any]] = {}
        for item in default_middleware() if middleware is None else middleware:
            self.add_middleware(item)

    # Middleware ---------------------------------------------------------------

    def add_middleware(
        self,
        middleware: Middleware,
        *,
        before: type[Middleware] | None = None,
        after: type[Middleware] | None = None,
    ) -> None:
        """Add a middleware, at the end or next to an existing middleware class.

        Adding a second middleware of a type already installed is allowed, and
        logs a warning (its hooks would run twice).

        Raises:
          BeforeAndAfter: both ``before`` and ``after`` were given (a
            ``ValueError`` and an ``AssertionError``).
          ValueError: the named middleware is not installed.
        """
        if before and after:
            raise BeforeAndAfter("Pass either 'before' or 'after', not both.")
        if any(type(installed) is type(middleware) for installed in self.middleware):
            self.logger.warning(
                "You're adding a middleware of the same type twice: %s. Its hooks will run once per instance.",
                type(middleware).__name__,
            )
        if before or after:
            anchor = before or after
            positions = [i for i, m in enumerate(self.middleware) if isinstance(m, anchor)]  # type: ignore[arg-type]
            if not positions:
                raise ValueError(f"Middleware {anchor.__name__} is not installed.")  # type: ignore[union-attr]
            index = positions[0] if before else positions[-1] + 1
            self.middleware.insert(index, middleware)
        else:
            self.middleware.append(middleware)
        self.actor_options |= set(middleware.actor_options)
        self._rebuild_hooks()
        for actor in self.actors.values():
            middleware.after_declare_actor(self, actor)

    def _rebuild_hooks(self) -> None:
        from .middleware.middleware import Middleware

        hooks: dict[str, list[Any]] = {}
        for name in _HOOKS:
            for prefix in ("before_", "after_"):
                attribute = prefix + name
                hooks[attribute] = [
                    getattr(m, attribute)
                    for m in self.middleware
                    if getattr(type(m), attribute, None) is not getattr(Middleware, attribute, None)
                    and hasattr(m, attribute)
                ]
        for name in list(hooks):
            if name.startswith("after_"):
                hooks[name].reverse()
        self._hooks = hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Run the ``before_<signal>`` hooks in middleware order; errors propagate."""
        for hook in self._hooks.get("before_" + signal, ()):
            hook(self, *args, **kwargs)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Run the ``after_<signal>`` hooks in reverse order.

        An error in one hook is logged and the others still run.
        """
        self.emit_after_collect(signal, *args, **kwargs)

    def emit_after_collect(self, signal: str, *args: Any, **kwargs: Any) -> list[Exception]:
        """:meth:`emit_after`, returning the errors the hooks raised (already logged)."""
        errors: list[Exception] = []
        for hook in self._hooks.get("after_" + signal, ()):
            try:
                hook(self, *args, **kwargs)
            except Exception as exc:
                self.logger.exception("Middleware hook %s failed.", getattr(hook, "__qualname__", hook))
                errors.append(exc)
        return errors

    # Actors and queues -----------------------------------------------------------

    def declare_actor(self, actor: Actor[Any, Any]) -> None:
        """Declare an actor (and its queue) on this broker.

        Raises:
          ValueError: the actor uses options that no installed middleware declares.
        """
        self.emit_before("declare_actor", actor)
        invalid = set(actor.options) - self.actor_options
        if invalid:
            raise ValueError(
                f"Actor {actor.actor_name!r} uses option(s) that no installed middleware "
                f"declares: {', '.join(sorted(invalid))}. Add the middleware that "
                "provides them, or remove the options."
            )
        self.declare_queue(actor.queue_name)
        self.actors[actor.actor_name] = actor
        self.emit_after("declare_actor", actor)

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue. Brokers override :meth:`_declare_queue`."""
        if queue_name in self.get_declared_queues():
            return
        validate_queue_name(queue_name)
        self.emit_before("declare_queue", queue_name)
        self._declare_queue(queue_name)
        self.emit_after("declare_queue", queue_name)

    def _declare_queue(self, queue_name: str) -> None:
        raise NotImplementedError

    def get_actor(self, actor_name: str) -> Actor[Any, Any]:
        """Return the actor called ``actor_name``.

        Raises:
          ActorNotFound: no such actor is declared.
        """
        try:
            return self.actors[actor_name]
        except KeyError:
            raise ActorNotFound(f"Actor {actor_name!r} is not declared on this broker.") from None

    def get_declared_actors(self) -> set[str]:
        """Return the names of the declared actors."""
        return set(self.actors)

    def get_declared_queues(self) -> set[str]:
        """Return the names of the declared queues."""
        raise NotImplementedError

    def get_declared_delay_queues(self) -> set[str]:
        """Delayed messages live inside each queue's own store here: always empty."""
        return set()

    def get_results_backend(self) -> ResultBackend:
        """Return the backend of the installed Results middleware.

        Raises:
          NoResultsBackend: no Results middleware with a backend is installed.
        """
        from .results.middleware import Results

        for middleware in self.middleware:
            if isinstance(middleware, Results) and middleware.backend is not None:
                return middleware.backend
        raise NoResultsBackend(
            "This broker has no results backend: add the Results middleware "
            "(DJANGO_ACTORS['RESULTS'] in Django settings)."
        )

    def has_results_backend(self) -> bool:
        """Whether a Results middleware with a backend is installed."""
        try:
            self.get_results_backend()
        except NoResultsBackend:
            return False
        return True

    # Enqueueing ---------------------------------------------------------------------

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue a message, after ``delay`` milliseconds when given.

        Returns the message as enqueued (delayed messages carry an ``eta``).

        Raises:
          TypeError: the message cannot be encoded; nothing is enqueued.
          MessageTooLarge: the encoded message exceeds ``max_message_size``.
        """
        return self.enqueue_many([message], delay=delay)[0]

    def enqueue_many(self, messages: Iterable[Message[Any]], *, delay: int | None = None) -> list[Message[Any]]:
        """Enqueue many messages, in one round trip where the broker can.

        Every message is encoded before any is sent: if one cannot be encoded,
        none is enqueued.
        """
        prepared, eta = self._prepare_many(messages, delay)
        return self._send_prepared(prepared, eta, delay)

    def _prepare_many(
        self, messages: Iterable[Message[Any]], delay: int | None
    ) -> tuple[list[tuple[Message[Any], bytes]], int | None]:
        """The first half of :meth:`enqueue_many`: run the ``before_enqueue``
        hooks, declare new queues, encode and check the size of every message.
        Nothing is sent. Returns the (message, encoded) pairs and the eta.

        Raises:
          TypeError, MessageTooLarge: as :meth:`enqueue_many`.
        """
        prepared: list[tuple[Message[Any], bytes]] = []
        eta = current_millis() + delay if delay else None
        # The send() path: hooks looked up once, the declared queues read once.
        before = self._hooks.get("before_enqueue")
        declared = self.get_declared_queues()
        limit = self.max_message_size
        for message in messages:
            if eta is not None:
                message = message.copy(options={**message.options, "eta": eta})
            if before:
                for hook in before:
                    hook(self, message, delay)
            if message.queue_name not in declared:
                self.declare_queue(message.queue_name)
                declared = self.get_declared_queues()
            data = message.encode()
            if len(data) > limit:
                raise MessageTooLarge(
                    f"Message for actor {message.actor_name!r} is {len(data)} bytes encoded, "
                    f"over the limit of {limit} bytes."
                )
            prepared.append((message, data))
        return prepared, eta

    def _send_prepared(
        self, prepared: list[tuple[Message[Any], bytes]], eta: int | None, delay: int | None
    ) -> list[Message[Any]]:
        """The second half of :meth:`enqueue_many`: store what
        :meth:`_prepare_many` returned and run the ``after_enqueue`` hooks."""
        if prepared:
            self._enqueue_many(prepared, eta)
        if self._hooks.get("after_enqueue"):
            for message, _ in prepared:
                self.emit_after("enqueue", message, delay)
        return [message for message, _ in prepared]

    def _enqueue_many(self, items: list[tuple[Message[Any], bytes]], eta: int | None) -> None:
        """Store encoded messages; ``eta`` in epoch milliseconds for delayed ones."""
        raise NotImplementedError

    # Consuming ----------------------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """Return a consumer for a queue.

        Parameters:
          queue_name: the queue.
          prefetch: how many unacked messages the consumer may hold.
          timeout: how long a fetch waits for a message, in milliseconds.
        """
        raise NotImplementedError

    def flush(self, queue_name: str) -> None:
        """Drop every message in a queue, delayed ones included."""
        raise NotImplementedError

    def flush_all(self) -> None:
        """Drop every message in every queue, and the dead letters."""
        raise NotImplementedError

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until a queue has no ready, delayed or in-flight message.

        Raises:
          QueueJoinTimeout: the timeout (milliseconds) ran out first.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the broker's connections."""

    def requeue_dead_letters(self, message_ids: Iterable[str] | None = None) -> int:
        """Move dead letters back to their queues; all when ``message_ids`` is None."""
        raise NotImplementedError

    def purge_dead_letters(self, message_ids: Iterable[str] | None = None) -> int:
        """Delete dead letters; all when ``message_ids`` is None."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class MessageProxy:
    """A fetched message, with the state a worker keeps while processing it.

    Attribute reads fall through to the underlying :class:`Message`.
    """

    def __init__(self, message: Message[Any], *, tag: Any = None) -> None:
        self._message = message
        self._exception: BaseException | None = None
        self._failed = False
        self._fail_reason: str | None = None
        #: Broker-specific handle (stream entry id, row id...).
        self.tag = tag
        #: Set by the worker before processing: the sort key within a worker.
        self.priority = 0

    @property
    def message(self) -> Message[Any]:
        """The underlying message."""
        return self._message

    @property
    def failed(self) -> bool:
        """Whether the message failed for good (it will be dead-lettered)."""
        return self._failed

    def fail(self, reason: str | None = None) -> None:
        """Mark the message as failed for good."""
        self._failed = True
        if reason:
            self._fail_reason = reason

    @property
    def fail_reason(self) -> str | None:
        """Why the message failed, when known."""
        if self._fail_reason:
            return self._fail_reason
        if self._exception is not None:
            return f"{type(self._exception).__name__}: {self._exception}"
        return None

    def stuff_exception(self, exception: BaseException) -> None:
        """Remember the exception the actor raised."""
        self._exception = exception

    def clear_exception(self) -> None:
        """Forget the remembered exception."""
        self._exception = None

    @property
    def exception(self) -> BaseException | None:
        """The exception the actor raised, if any."""
        return self._exception

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def __eq__(self, other: object) -> bool:
        """Equal to another proxy of an equal message, or to an equal :class:`Message`."""
        if isinstance(other, MessageProxy):
            return self._message == other._message
        if isinstance(other, Message):
            return self._message == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._message.message_id)  # equal messages have equal ids

    def __lt__(self, other: MessageProxy) -> bool:
        return (self.priority, self._message.message_timestamp) < (
            other.priority,
            other._message.message_timestamp,
        )

    def __str__(self) -> str:
        return str(self._message)

    def __repr__(self) -> str:
        return f"MessageProxy({self._message!r})"


class Consumer:
    """Fetches messages from one queue. Iterating yields a proxy, or ``None``
    when a fetch times out.

    ``ack``, ``nack`` and ``requeue`` may be called from any thread.
    """

    def __iter__(self) -> Iterator[MessageProxy | None]:
        return self

    def __next__(self) -> MessageProxy | None:
        found = self.fetch(1)
        return found[0] if found else None

    def fetch(self, count: int) -> list[MessageProxy]:
        """Fetch up to ``count`` messages, waiting up to the consumer's timeout."""
        raise NotImplementedError

    def ack(self, message: MessageProxy) -> None:
        """Acknowledge a processed message: it leaves the broker."""
        raise NotImplementedError

    def nack(self, message: MessageProxy) -> None:
        """Dead-letter a message that failed for good."""
        raise NotImplementedError

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Hand fetched but unprocessed messages back to the broker."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the consumer."""


# The global broker ----------------------------------------------------------------------

_broker: Broker | None = None
_broker_lock = threading.RLock()


def get_broker() -> Broker:
    """Return the global broker, building it from settings on first use.

    With Django settings configured the broker comes from ``DJANGO_ACTORS``;
    without them it is a :class:`~django_actors.brokers.stub.StubBroker`.
    """
    broker = _broker
    if broker is not None:
        return broker
    with _broker_lock:
        if _broker is None:
            from django.conf import settings

            if settings.configured:
                from .conf import build_broker

                set_broker(build_broker())
            else:
                from .brokers.stub import StubBroker

                set_broker(StubBroker())
        assert _broker is not None
        return _broker


def set_broker(broker: Broker) -> None:
    """Make ``broker`` the global broker and declare every registered actor on it.

    Actors whose options the broker does not support are left undeclared and
    raise ``ValueError`` when they are first used.
    """
    global _broker
    from .actor import registered_actors

    with _broker_lock:
        _broker = broker
        for actor in registered_actors():
            if actor.explicit_broker is None and actor.actor_name not in broker.actors:
                try:
                    broker.declare_actor(actor)
                except ValueError as exc:
                    logger.debug("Actor %s not declared on %r: %s", actor.actor_name, broker, exc)


def reset_broker() -> None:
    """Close and forget the global broker; the next :func:`get_broker` builds a new one."""
    global _broker
    with _broker_lock:
        broker, _broker = _broker, None
    if broker is not None:
        broker.close()

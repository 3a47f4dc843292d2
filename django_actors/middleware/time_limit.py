"""TimeLimit: interrupt actors that run for too long."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .middleware import Middleware, MiddlewareError, get_option

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

logger = logging.getLogger(__name__)


class TimeLimitExceeded(MiddlewareError):
    """Raised inside an actor that ran past its time limit."""


def raise_in_thread(thread_id: int, exception: type[BaseException]) -> bool:
    """Raise ``exception`` asynchronously in the thread ``thread_id``.

    The exception arrives at the thread's next Python bytecode; a thread
    blocked in C code sees it when it returns to Python.
    """
    changed: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception)
    )
    if changed > 1:  # pragma: no cover - defensive, as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return changed == 1


# Threads running an actor's own code (not middleware hooks). Interruptions
# (time limits, shutdown notices) are raised only there, so that a hook after
# the actor, such as storing its result, is never cut short.
_in_actor: set[int] = set()
_in_actor_lock = threading.Lock()


def enter_actor() -> None:
    """Mark the current thread as running an actor's code (the worker calls it)."""
    _in_actor.add(threading.get_ident())


def leave_actor() -> None:
    """Undo :func:`enter_actor`.

    An interruption raised just before is either delivered here (the actor
    overran) or dropped; none can arrive later.
    """
    ident = threading.get_ident()
    _in_actor.discard(ident)
    with _in_actor_lock:  # wait out an interrupter that saw this thread inside
        pass
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def interrupt_actor(thread_id: int, exception: type[BaseException]) -> bool:
    """Raise ``exception`` in ``thread_id`` if it is running an actor's code.

    Returns whether it was raised.
    """
    with _in_actor_lock:
        if thread_id not in _in_actor:
            return False
        return raise_in_thread(thread_id, exception)


class TimeLimit(Middleware):
    """Raise :class:`TimeLimitExceeded` in actors that run past ``time_limit``.

    Parameters:
      time_limit: the default limit in milliseconds (10 minutes); actors and
        messages override it with the ``time_limit`` option.
      interval: how often the limits are checked, in milliseconds.
    """

    actor_options = {"time_limit"}

    def __init__(self, *, time_limit: int = 600_000, interval: int = 1000) -> None:
        self.time_limit = time_limit
        self.interval = interval
        self._deadlines: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval / 1000)
            now = time.monotonic()
            with self._lock:
                if not self._deadlines:
                    self._monitor = None  # idle: the next limited message starts a new monitor
                    return
                # Under the lock _clear() takes: a cleared limit is never raised. A
                # thread not in its actor's code yet (or any more) is left alone.
                for tid, (deadline, message) in list(self._deadlines.items()):
                    if now >= deadline and interrupt_actor(tid, TimeLimitExceeded):
                        del self._deadlines[tid]
                        logger.warning("Time limit exceeded; raised in the thread of message %s.", message.message_id)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        limit = get_option(broker, message, "time_limit", self.time_limit)
        if not limit:
            return
        with self._lock:
            self._deadlines[threading.get_ident()] = (time.monotonic() + limit / 1000, message)
            if self._monitor is None:
                self._monitor = threading.Thread(target=self._watch, name="django-actors-time-limit", daemon=True)
                self._monitor.start()

    def _clear(self) -> None:
        with self._lock:
            self._deadlines.pop(threading.get_ident(), None)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._clear()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._clear()

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

    def _ensure_monitor(self) -> None:
        if self._monitor is not None and self._monitor.is_alive():
            return
        with self._lock:
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(
                    target=self._watch, name="django-actors-time-limit", daemon=True
                )
                self._monitor.start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval / 1000)
            now = time.monotonic()
            with self._lock:
                expired = [(tid, msg) for tid, (deadline, msg) in self._deadlines.items() if now >= deadline]
                for tid, _ in expired:
                    del self._deadlines[tid]
            for tid, message in expired:
                logger.warning("Time limit exceeded; raising in thread for message %s.", message.message_id)
                raise_in_thread(tid, TimeLimitExceeded)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        limit = get_option(broker, message, "time_limit", self.time_limit)
        if not limit:
            return
        self._ensure_monitor()
        with self._lock:
            self._deadlines[threading.get_ident()] = (time.monotonic() + limit / 1000, message)

    def _clear(self) -> None:
        with self._lock:
            self._deadlines.pop(threading.get_ident(), None)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._clear()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._clear()

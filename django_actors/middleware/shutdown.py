"""ShutdownNotifications: tell long-running actors that the worker is stopping."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .middleware import Middleware, MiddlewareError, get_option
from .time_limit import interrupt_actor

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..worker import Worker


class Shutdown(MiddlewareError):  # noqa: N818 - dramatiq's name
    """Raised inside actors with ``notify_shutdown`` when their worker stops."""


class ShutdownNotifications(Middleware):
    """Raise :class:`Shutdown` in running actors that ask for it.

    Parameters:
      notify_shutdown: the default for the ``notify_shutdown`` actor option.
    """

    actor_options = {"notify_shutdown"}

    def __init__(self, *, notify_shutdown: bool = False) -> None:
        self.notify_shutdown = notify_shutdown
        self._threads: set[int] = set()
        self._lock = threading.Lock()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if get_option(broker, message, "notify_shutdown", self.notify_shutdown):
            with self._lock:
                self._threads.add(threading.get_ident())

    def _clear(self) -> None:
        with self._lock:
            self._threads.discard(threading.get_ident())

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._clear()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._clear()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread_id in threads:
            interrupt_actor(thread_id, Shutdown)

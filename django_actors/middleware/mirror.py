"""Mirror: feed the admin's view of messages, compositions and workers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..mirror import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_BUFFER,
    DEFAULT_RETENTION,
    ENQUEUE,
    ERROR,
    NACK,
    SKIP,
    START,
    SUCCESS,
    Recorder,
)
from .middleware import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..message import Message
    from ..worker import Worker


class Mirror(Middleware):
    """Record what happens to messages so the admin can show it.

    Each hook appends one tuple to an in-process buffer; a daemon thread
    writes the buffer to the mirror tables every ``flush_interval``
    milliseconds in a few bulk statements (see :mod:`django_actors.mirror`),
    and when a worker or the process stops.

    Put it first in the middleware list (``DJANGO_ACTORS['MIRROR']`` does):
    its ``after_*`` hooks then run last, once the results and compositions
    have been updated.

    Parameters:
      flush_interval: how often buffered events are written, in milliseconds.
      retention: how long rows are kept, in milliseconds; ``None`` never prunes.
      max_buffer: the most events held in memory while the database is unreachable.
      using: the database alias to write to (the router's choice by default).
    """

    def __init__(
        self,
        *,
        flush_interval: int = DEFAULT_FLUSH_INTERVAL,
        retention: int | None = DEFAULT_RETENTION,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        using: str | None = None,
    ) -> None:
        self.recorder = Recorder(flush_interval=flush_interval, retention=retention, max_buffer=max_buffer, using=using)

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        self.recorder.record(broker, ENQUEUE, message)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.recorder.record(broker, START, message.message)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            self.recorder.record(broker, SUCCESS, message.message, result)
        else:
            self.recorder.record(broker, ERROR, message.message, exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.recorder.record(broker, SKIP, message.message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self.recorder.record(broker, NACK, message.message, (message.exception, message.fail_reason))

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self.recorder.broker = broker
        self.recorder.worker_started(worker)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.recorder.wake()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.recorder.worker_stopped()

    def before_process_stop(self, broker: Broker) -> None:
        self.recorder.stop()

"""The Worker: consumer threads fetch messages, worker threads run actors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import ActorNotFound, ConnectionError, RateLimitExceeded, Retry
from .middleware.middleware import SkipMessage, get_option
from .middleware.time_limit import enter_actor, leave_actor

if TYPE_CHECKING:
    from .actor import Actor
    from .broker import Broker, Consumer, MessageProxy

logger = logging.getLogger(__name__)

#: The longest pause before handing back a message after a connection error,
#: in seconds: the pause doubles from 50 ms each time the same message is
#: handed back, so a service that stays down does not make the worker spin.
MAX_HAND_BACK_PAUSE = 5.0

#: How many unacked messages each consumer may hold when a worker is given no
#: ``prefetch``; 0 means twice ``worker_threads``. Read when a worker is built,
#: from the ``dramatiq_queue_prefetch`` environment variable (dramatiq's name).
QUEUE_PREFETCH = int(os.getenv("dramatiq_queue_prefetch", "0") or 0)  # noqa: SIM112 - dramatiq's spelling


class Worker:
    """Consume messages from a broker and run their actors.

    Parameters:
      broker: the broker to consume from.
      queues: the queue names to consume; every declared queue when ``None``.
      worker_timeout: how long a fetch or an idle wait lasts, in milliseconds;
        it bounds how quickly the worker notices a stop or a new queue.
      worker_threads: how many actors run at once.
      prefetch: how many unacked messages each consumer may hold (default
        :data:`QUEUE_PREFETCH`, else twice ``worker_threads``). Also
        readable and settable as :attr:`queue_prefetch`; a change after
        :meth:`start` applies from the consumers' next fetch, within the
        limit each broker consumer was opened with.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        queues: Iterable[str] | None = None,
        worker_timeout: int = 1000,
        worker_threads: int = 8,
        prefetch: int | None = None,
    ) -> None:
        if worker_threads < 1:
            raise ValueError(f"worker_threads must be at least 1, not {worker_threads!r}.")
        self.broker = broker
        self.queues = set(queues) if queues is not None else None
        self.worker_timeout = worker_timeout
        self.worker_threads = worker_threads
        self.queue_prefetch = prefetch or QUEUE_PREFETCH or worker_threads * 2
        self.work_queue: queue.PriorityQueue[tuple[int, int, MessageProxy, _ConsumerThread]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self.consumers: dict[str, _ConsumerThread] = {}
        self.workers: list[_WorkerThread] = []
        self._running = False
        self._paused = threading.Event()
        #: Guards starting a message against pause(); counts messages running.
        self._activity = threading.Condition()
        self._active = 0
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        #: How many times in a row each message was handed back (connection errors).
        self._hand_backs: dict[str, int] = {}
        self._loop: _EventLoopThread | None = None

    @property
    def prefetch(self) -> int:
        """How many unacked messages each consumer may hold (:attr:`queue_prefetch`)."""
        return self.queue_prefetch

    @prefetch.setter
    def prefetch(self, value: int) -> None:
        self.queue_prefetch = value

    # Lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer and worker threads."""
        self.broker.emit_before("worker_boot", self)
        self._running = True
        self._refresh_consumers()
        for _ in range(self.worker_threads):
            thread = _WorkerThread(self)
            thread.start()
            self.workers.append(thread)
        self._watcher = threading.Thread(target=self._watch_queues, name="django-actors-queues", daemon=True)
        self._watcher.start()
        self.broker.emit_after("worker_boot", self)

    def _watch_queues(self) -> None:
        while not self._stopping.wait(self.worker_timeout / 1000):
            self._refresh_consumers()

    def _refresh_consumers(self) -> None:
        with self._lock:
            if not self._running:
                return
            wanted = self.broker.get_declared_queues()
            if self.queues is not None:
                wanted &= self.queues
            for queue_name in sorted(wanted - set(self.consumers)):
                thread = _ConsumerThread(self, queue_name)
                self.consumers[queue_name] = thread
                thread.start()

    def pause(self) -> None:
        """Stop fetching and running messages until :meth:`resume`.

        Returns once the messages already running have finished (at once when
        called from one of this worker's threads); no message starts after.
        """
        with self._activity:
            self._paused.set()
            current = threading.current_thread()
            if current in self.workers or (self._loop is not None and current is self._loop._thread):
                return
            while self._active and self._paused.is_set():
                self._activity.wait()

    def resume(self) -> None:
        """Undo :meth:`pause`, and resume worker threads paused one by one
        (:meth:`_WorkerThread.pause`)."""
        with self._activity:
            self._paused.clear()
            self._activity.notify_all()
        for thread in self.workers:
            thread.resume()

    @property
    def paused(self) -> bool:
        """Whether the worker is paused."""
        return self._paused.is_set()

    def stop(self, timeout: int = 600_000) -> None:
        """Stop gracefully.

        Fetching stops at once; messages already running get up to
        ``timeout`` milliseconds to finish; messages fetched but not started
        are handed back to the broker.
        """
        if not self._running:
            return
        self.broker.emit_before("worker_shutdown", self)
        with self._lock:
            self._running = False
        self._stopping.set()
        for consumer in self.consumers.values():
            consumer.stop()
        for worker in self.workers:
            worker.stop()
        self._paused.clear()
        deadline = time.monotonic() + timeout / 1000
        for consumer in self.consumers.values():
            consumer.join(max(deadline - time.monotonic(), 0))
        for worker in self.workers:
            worker.join(max(deadline - time.monotonic(), 0))
        self._hand_back()
        for worker in self.workers:
            if worker.is_alive():
                logger.warning("A worker thread did not finish its message within %d ms.", timeout)
        for consumer in self.consumers.values():
            consumer.close()  # a consumer thread still fetching closes it when it exits
        if self._loop is not None:
            self._loop.stop()
        self.broker.emit_after("worker_shutdown", self)

    def _hand_back(self) -> None:
        pending: dict[_ConsumerThread, list[MessageProxy]] = {}
        while True:
            try:
                _, _, proxy, consumer = self.work_queue.get_nowait()
            except queue.Empty:
                break
            pending.setdefault(consumer, []).append(proxy)
        for consumer, proxies in pending.items():
            consumer.requeue(proxies)

    def join(self, timeout: int | None = None) -> None:
        """Wait until every consumed queue is empty and nothing is in flight.
        Failed messages are not raised here (``broker.join(fail_fast=True)``
        does that).

        Raises:
          QueueJoinTimeout: ``timeout`` (ms) ran out first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        options: dict[str, Any] = {}
        if "fail_fast" in inspect.signature(self.broker.join).parameters:
            options["fail_fast"] = False
        while True:
            for queue_name in list(self.consumers):
                remaining = None if deadline is None else max(int((deadline - time.monotonic()) * 1000), 0)
                self.broker.join(queue_name, timeout=remaining, **options)
            if self.work_queue.empty() and all(c.in_flight == 0 for c in self.consumers.values()):
                return
            time.sleep(0.001)

    # Processing -------------------------------------------------------------------

    def _event_loop(self) -> _EventLoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = _EventLoopThread()
            return self._loop

    def process_message(self, proxy: MessageProxy, consumer: _ConsumerThread) -> None:
        """Run one message through the middleware and its actor, then settle it."""
        broker = self.broker
        hand_back = False
        try:
            if proxy.failed:  # undecodable: nothing to run
                return
            actor = broker.actors.get(proxy.actor_name)
            if actor is None:
                # The exception's text is the actor's name (as dramatiq's);
                # the log line and the dead letter's reason say more.
                reason = f"Actor {proxy.actor_name!r} is not declared on this broker."
                logger.error("Dead-lettering message %s: %s", proxy.message_id, reason)
                proxy.stuff_exception(ActorNotFound(proxy.actor_name))
                proxy.fail(reason)
                return
            started = False
            try:
                broker.emit_before("process_message", proxy)
                started = True
                result = self._call(actor, proxy)
                errors = broker.emit_after_collect("process_message", proxy, result=result)
                hand_back = any(is_transient(error) for error in errors)
            except SkipMessage:
                logger.info("Skipped message %s.", proxy.message_id)
                broker.emit_after("skip_message", proxy)
            except BaseException as exc:
                if not started and is_transient(exc):
                    # A hook could not reach a service (the results backend,
                    # say): nothing ran; hand the message back for later.
                    logger.warning("Handing message %s back: %s", proxy.message_id, exc)
                    hand_back = True
                    return
                if isinstance(exc, Retry):
                    logger.info("Message %s asked for a retry: %s", proxy.message_id, exc)
                elif isinstance(exc, RateLimitExceeded):  # expected under load: no traceback
                    logger.debug("Rate limit exceeded in message %s: %s.", proxy.message_id, exc)
                elif _is_thrown(broker, proxy, exc):
                    logger.info("Actor %s raised %r, which it throws.", proxy.actor_name, exc)
                else:
                    logger.error("Actor %s failed on message %s.", proxy.actor_name, proxy.message_id, exc_info=True)
                proxy.stuff_exception(exc)
                errors = broker.emit_after_collect("process_message", proxy, exception=exc)
                hand_back = any(is_transient(error) for error in errors)
        finally:
            if hand_back:
                # An after hook (a retry, a pipeline's next step, a result)
                # hit a connection error: acking would lose that work, so the
                # message is handed back and runs again (at least once).
                logger.warning("Handing message %s back after a connection error in a hook.", proxy.message_id)
                self._pause_before_hand_back(proxy.message_id)
                consumer.requeue([proxy])
            else:
                if self._hand_backs:
                    self._hand_backs.pop(proxy.message_id, None)
                consumer.settle(proxy)

    def _pause_before_hand_back(self, message_id: str) -> None:
        """Wait 50 ms, doubling each time the same message comes back, up to
        :data:`MAX_HAND_BACK_PAUSE` (a stop cuts the wait short)."""
        if len(self._hand_backs) > 10_000:  # messages handed back and then run elsewhere
            self._hand_backs.clear()
        count = self._hand_backs.get(message_id, 0)
        self._hand_backs[message_id] = count + 1
        self._stopping.wait(min(0.05 * 2 ** min(count, 10), MAX_HAND_BACK_PAUSE))

    def _call(self, actor: Actor[Any, Any], proxy: MessageProxy) -> Any:
        enter_actor()  # time limits and shutdown notices are raised only in here
        try:
            if not actor.is_async:
                return actor.fn(*proxy.args, **proxy.kwargs)
            return self._event_loop().run(actor.fn(*proxy.args, **proxy.kwargs))
        finally:
            leave_actor()


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a lost connection (to a broker, a backend or the
    database) rather than a bug: work that hit it is worth doing again."""
    from django.db.utils import InterfaceError, OperationalError

    from .errors import ConnectionError as BrokerConnectionError

    return isinstance(error, BrokerConnectionError | OSError | OperationalError | InterfaceError)


def _is_thrown(broker: Broker, proxy: MessageProxy, exc: BaseException) -> bool:
    """Whether ``exc`` is one the actor declares in ``throws`` (expected: no error log)."""
    throws = get_option(broker, proxy, "throws")
    try:
        return bool(throws) and isinstance(exc, throws)
    except TypeError:  # not a class or tuple of classes
        return False


class _ConsumerThread(threading.Thread):
    """Fetches messages from one queue into the worker's priority queue."""

    def __init__(self, worker: Worker, queue_name: str) -> None:
        super().__init__(name=f"django-actors-consumer-{queue_name}", daemon=True)
        self.worker = worker
        self.broker = worker.broker
        self.queue_name = queue_name
        self.in_flight = 0
        self._room = threading.Condition()
        self._running = True
        self._closed = False
        self._close_requested = False
        self._exited = False
        self.consumer: Consumer | None = None

    def run(self) -> None:
        try:
            self._consume()
        finally:
            with self._room:
                self._exited = True
                close_now = self._close_requested
            if close_now:
                self._close()

    def _consume(self) -> None:
        worker = self.worker
        backoff = 0.1
        while self._running:
            if worker._paused.is_set():
                time.sleep(min(worker.worker_timeout / 1000, 0.05))
                continue
            with self._room:
                prefetch = worker.queue_prefetch
                room = prefetch - self.in_flight
                # Fetch in batches: while every thread still has a message
                # waiting for it, wait for half the prefetch to free up
                # rather than fetching each freed slot in a round trip of
                # its own; fetch at once when threads would run dry.
                if room <= 0 or (room < prefetch // 2 and self.in_flight >= worker.worker_threads):
                    self._room.wait(worker.worker_timeout / 1000)
                    continue
            try:
                if self.consumer is None:
                    self.consumer = self.broker.consume(
                        self.queue_name, prefetch=worker.queue_prefetch, timeout=worker.worker_timeout
                    )
                proxies = self.consumer.fetch(room)
                backoff = 0.1
            except ConnectionError as exc:
                logger.warning(
                    "Consumer for %r lost its connection (%s); retrying in %.1fs.", self.queue_name, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except Exception:
                logger.exception("Consumer for %r failed; retrying in %.1fs.", self.queue_name, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if not proxies:
                continue
            for proxy in proxies:
                actor = self.broker.actors.get(proxy.actor_name)
                proxy.priority = actor.priority if actor is not None else 0
            with self._room:
                # Checked under the lock stop() takes: what the worker's hand-back
                # cannot see any more goes straight back to the broker.
                if not self._running:
                    self._hand_back_late(proxies)
                    break
                self.in_flight += len(proxies)
                for proxy in proxies:
                    worker.work_queue.put((proxy.priority, next(worker._seq), proxy, self))
        self.broker.emit_before("consumer_thread_shutdown", self)

    def _hand_back_late(self, proxies: list[MessageProxy]) -> None:
        assert self.consumer is not None
        try:
            self.consumer.requeue(proxies)
        except Exception:
            logger.exception("Could not hand back %d message(s); they will be delivered again.", len(proxies))

    def settle(self, proxy: MessageProxy) -> None:
        """Ack or nack a processed message (called from worker threads)."""
        broker = self.broker
        consumer = self.consumer
        try:
            assert consumer is not None
            if proxy.failed:
                broker.emit_before("nack", proxy)
                consumer.nack(proxy)
                broker.emit_after("nack", proxy)
            else:
                broker.emit_before("ack", proxy)
                consumer.ack(proxy)
                broker.emit_after("ack", proxy)
        except Exception:
            logger.exception("Could not settle message %s; it will be delivered again.", proxy.message_id)
        finally:
            with self._room:
                self.in_flight -= 1
                self._room.notify_all()

    def requeue(self, proxies: list[MessageProxy]) -> None:
        """Hand unstarted messages back to the broker."""
        try:
            if self.consumer is not None:
                self.consumer.requeue(proxies)
        except Exception:
            logger.exception("Could not hand back %d message(s); they will be delivered again.", len(proxies))
        finally:
            with self._room:
                self.in_flight -= len(proxies)
                self._room.notify_all()

    def stop(self) -> None:
        with self._room:
            self._running = False
            self._room.notify_all()

    def close(self) -> None:
        """Close the consumer now, or when the thread exits if it is still fetching."""
        with self._room:
            self._close_requested = True
            if not self._exited:
                return
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:
                logger.exception("Error closing the consumer for %r.", self.queue_name)


class _WorkerThread(threading.Thread):
    """Runs messages from the worker's priority queue.

    :meth:`pause` stops this one thread taking messages (the consumers go on
    fetching); :attr:`paused_event` is set once it has stopped.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="django-actors-worker", daemon=True)
        self.worker = worker
        self._running = True
        self._pause_requested = False
        self._pause_lock = threading.Lock()
        #: Set while this thread is paused and takes no message.
        self.paused_event = threading.Event()

    def pause(self) -> None:
        """Stop taking messages after the current one; wait on
        :attr:`paused_event` to know it has stopped."""
        with self._pause_lock:
            self._pause_requested = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        with self._pause_lock:
            self._pause_requested = False
            self.paused_event.clear()

    def _park(self) -> None:
        with self._pause_lock:
            if self._pause_requested:
                self.paused_event.set()

    def run(self) -> None:
        worker = self.worker
        broker = worker.broker
        broker.emit_after("worker_thread_boot", self)
        timeout = worker.worker_timeout / 1000
        while self._running:
            if self._pause_requested:
                self._park()
                time.sleep(min(timeout, 0.05))
                continue
            if worker._paused.is_set():
                time.sleep(min(timeout, 0.05))
                continue
            try:
                item = worker.work_queue.get(timeout=timeout)
            except queue.Empty:
                continue
            _, _, proxy, consumer = item
            if not self._running:
                worker.work_queue.put(item)
                break
            if self._pause_requested:  # paused while this thread waited
                worker.work_queue.put(item)
                continue
            with worker._activity:
                if worker._paused.is_set():  # paused while this thread waited
                    worker.work_queue.put(item)
                    continue
                worker._active += 1
            try:
                worker.process_message(proxy, consumer)
            finally:
                with worker._activity:
                    worker._active -= 1
                    worker._activity.notify_all()
        broker.emit_before("worker_thread_shutdown", self)

    def stop(self) -> None:
        self._running = False


class _EventLoopThread:
    """An asyncio event loop in its own thread, shared by a worker's async actors."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="django-actors-asyncio", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the loop and wait for it from this thread.

        The caller's context variables (the current message) are visible to it.
        """
        context = contextvars.copy_context()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            task = self.loop.create_task(coroutine)

            def done(task: asyncio.Task[Any]) -> None:
                if task.cancelled():
                    future.cancel()
                elif task.exception() is not None:
                    future.set_exception(task.exception())
                else:
                    future.set_result(task.result())

            task.add_done_callback(done)
            future.add_done_callback(lambda f: f.cancelled() and self.loop.call_soon_threadsafe(task.cancel))
            self._task = task

        self.loop.call_soon_threadsafe(context.run, start)
        try:
            while True:
                try:
                    return future.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    continue
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

"""An in-memory broker for tests."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from queue import Empty
from typing import Any

from ..broker import Broker, Consumer, MessageProxy
from ..errors import DecodeError, MessageTooLarge, QueueJoinTimeout, QueueNotFound
from ..message import Message, current_millis, salvage_message_id


class _StubQueue:
    """One queue: ready messages, delayed messages and the unacked count.

    ``put``, ``get``, ``qsize`` and ``unfinished_tasks`` read like a ``queue.Queue``
    (what tests written for dramatiq's stub broker poke at).
    """

    def __init__(self, name: str, lock: threading.Condition) -> None:
        self.name = name
        self.ready: deque[bytes] = deque()
        self.delayed: list[tuple[int, int, bytes]] = []
        self.unacked = 0
        self._lock = lock

    def put(self, data: bytes) -> None:
        """Put an encoded message (raw bytes, unchecked) at the back of the queue."""
        with self._lock:
            self.ready.append(data)
            self._lock.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> bytes:
        """Take the next ready message out of the queue (it will not be
        delivered), waiting up to ``timeout`` seconds when ``block``.

        Raises:
          queue.Empty: no message was ready in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self.promote(current_millis())
                if self.ready:
                    data = self.ready.popleft()
                    self._lock.notify_all()  # a join may be waiting for the queue to empty
                    return data
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise Empty
                wait = 0.05 if self.delayed else remaining
                self._lock.wait(wait if remaining is None or wait is None else min(wait, remaining))

    def qsize(self) -> int:
        """How many messages wait: ready and delayed."""
        with self._lock:
            return len(self)

    @property
    def unfinished_tasks(self) -> int:
        """How many messages are not settled yet: waiting or being processed."""
        with self._lock:
            return len(self) + self.unacked

    def promote(self, now: int) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            self.ready.append(heapq.heappop(self.delayed)[2])

    @property
    def empty(self) -> bool:
        return not self.ready and not self.delayed and not self.unacked

    def __len__(self) -> int:
        return len(self.ready) + len(self.delayed)


class StubBroker(Broker):
    """A broker that keeps messages in memory, for tests.

    Messages are stored encoded and decoded on fetch, like a real broker.
    Dead letters are kept in :attr:`dead_letters`.

    Parameters:
      middleware: the middleware; the defaults when ``None``.
      fail_fast_default: what :meth:`join` does when not told: raise the
        exception of a dead-lettered message (``True``, the default, as
        dramatiq 2's stub broker does), or wait on regardless of failures
        (``False``).
    """

    supports_batch_enqueue = True

    def __init__(self, middleware: Any = None, *, fail_fast_default: bool = True, **kwargs: Any) -> None:
        self.fail_fast_default = fail_fast_default
        self._lock = threading.Condition()
        self._queues: dict[str, _StubQueue] = {}
        self._seq = itertools.count()
        self.dead_letters_by_queue: dict[str, list[MessageProxy]] = {}
        #: Dead letters not yet raised by a ``join(fail_fast=True)``, by queue.
        self._unreported: dict[str, list[MessageProxy]] = {}
        super().__init__(middleware, **kwargs)

    @property
    def queues(self) -> dict[str, _StubQueue]:
        """The declared queues, by name."""
        return self._queues

    @property
    def dead_letters(self) -> list[MessageProxy]:
        """Every dead-lettered message, across queues."""
        with self._lock:
            return [m for letters in self.dead_letters_by_queue.values() for m in letters]

    def _declare_queue(self, queue_name: str) -> None:
        with self._lock:
            self._queues.setdefault(queue_name, _StubQueue(queue_name, self._lock))
            self.dead_letters_by_queue.setdefault(queue_name, [])

    def get_declared_queues(self) -> set[str]:
        return set(self._queues)

    def _queue(self, queue_name: str) -> _StubQueue:
        try:
            return self._queues[queue_name]
        except KeyError:
            raise QueueNotFound(f"Queue {queue_name!r} is not declared.") from None

    def _enqueue_many(self, items: list[tuple[Message[Any], bytes]], eta: int | None) -> None:
        with self._lock:
            for message, data in items:
                queue = self._queue(message.queue_name)
                if eta is None:
                    queue.ready.append(data)
                else:
                    heapq.heappush(queue.delayed, (eta, next(self._seq), data))
            self._lock.notify_all()

    def put_raw(self, queue_name: str, data: bytes) -> None:
        """Put raw bytes on a queue, bypassing encoding (for bad-input tests)."""
        with self._lock:
            self._queue(queue_name).ready.append(data)
            self._lock.notify_all()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> StubConsumer:
        self._queue(queue_name)
        return StubConsumer(self, queue_name, timeout)

    def _dead_letter(self, proxy: MessageProxy) -> None:
        self.dead_letters_by_queue.setdefault(proxy.queue_name, []).append(proxy)
        self._unreported.setdefault(proxy.queue_name, []).append(proxy)

    def _forget_unreported(self, proxies: list[MessageProxy]) -> None:
        gone = {id(proxy) for proxy in proxies}
        for letters in self._unreported.values():
            letters[:] = [proxy for proxy in letters if id(proxy) not in gone]

    def flush(self, queue_name: str) -> None:
        with self._lock:
            queue = self._queue(queue_name)
            queue.ready.clear()
            queue.delayed.clear()
            self._lock.notify_all()

    def flush_all(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.ready.clear()
                queue.delayed.clear()
            for letters in self.dead_letters_by_queue.values():
                letters.clear()
            self._unreported.clear()
            self._lock.notify_all()

    def join(self, queue_name: str, *, timeout: int | None = None, fail_fast: bool | None = None) -> None:
        """Wait until ``queue_name`` has no ready, delayed or unacked message.

        Parameters:
          timeout: milliseconds; ``None`` waits forever.
          fail_fast: raise the exception of the first message of this queue
            that was dead-lettered and not yet raised by an earlier
            ``fail_fast`` join (also when it failed before this call),
            instead of waiting on. The other unreported failures of the
            queue are considered reported with it. ``None``: the broker's
            ``fail_fast_default`` (``True`` unless built otherwise); pass
            ``False`` to wait on regardless of failures.

        Raises:
          QueueNotFound: the queue was never declared.
          QueueJoinTimeout: the timeout ran out.
          Exception: with ``fail_fast``, what the failed message raised.
        """
        if fail_fast is None:
            fail_fast = self.fail_fast_default
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        with self._lock:
            queue = self._queue(queue_name)
            while True:
                failures = self._unreported.get(queue_name)
                if fail_fast and failures:
                    failed = failures[0]
                    failures.clear()
                    raise failed.exception or RuntimeError(failed.fail_reason or "message failed")
                if queue.empty:
                    return
                wait = 0.05 if queue.delayed else None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueJoinTimeout(f"Queue {queue_name!r} was not empty after {timeout} ms.")
                    wait = remaining if wait is None else min(wait, remaining)
                self._lock.wait(wait)

    def requeue_dead_letters(self, message_ids: Iterable[str] | None = None) -> int:
        wanted = None if message_ids is None else set(message_ids)
        moved: list[MessageProxy] = []
        with self._lock:
            for letters in self.dead_letters_by_queue.values():
                keep: list[MessageProxy] = []
                for proxy in letters:
                    (moved if wanted is None or proxy.message_id in wanted else keep).append(proxy)
                letters[:] = keep
            self._forget_unreported(moved)
            for proxy in moved:
                if not proxy.message.actor_name:  # undecodable: hand back the bytes as they were
                    self._queue(proxy.queue_name).ready.append(proxy.tag)
            self._lock.notify_all()
        self.enqueue_many([p.message for p in moved if p.message.actor_name])
        return len(moved)

    def purge_dead_letters(self, message_ids: Iterable[str] | None = None) -> int:
        wanted = None if message_ids is None else set(message_ids)
        count = 0
        with self._lock:
            for letters in self.dead_letters_by_queue.values():
                keep = [p for p in letters if wanted is not None and p.message_id not in wanted]
                kept = {id(p) for p in keep}  # by identity: a redelivered message may die twice
                self._forget_unreported([p for p in letters if id(p) not in kept])
                count += len(letters) - len(keep)
                letters[:] = keep
        return count


class StubConsumer(Consumer):
    """Consumes one stub queue."""

    def __init__(self, broker: StubBroker, queue_name: str, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.timeout = timeout

    def fetch(self, count: int) -> list[MessageProxy]:
        broker = self.broker
        deadline = time.monotonic() + self.timeout / 1000
        with broker._lock:
            queue = broker._queue(self.queue_name)
            while True:
                queue.promote(current_millis())
                if queue.ready:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if queue.delayed:
                    until_due = (queue.delayed[0][0] - current_millis()) / 1000
                    remaining = min(remaining, max(until_due, 0.001))
                broker._lock.wait(remaining)
            raw = [queue.ready.popleft() for _ in range(min(count, len(queue.ready)))]
            queue.unacked += len(raw)
        return [self._decode(data) for data in raw]

    def _decode(self, data: bytes) -> MessageProxy:
        try:
            proxy = MessageProxy(Message.decode(data), tag=data)
        except DecodeError as exc:
            # Undecodable: dead-letter it at once, with its reason (under its
            # own id when it has one, so a caller waiting on it is told).
            placeholder: Message[Any] = Message(
                queue_name=self.queue_name, actor_name="", args=(), kwargs={}, options={}
            )
            message_id = salvage_message_id(data)
            proxy = MessageProxy(placeholder.copy(message_id=message_id) if message_id else placeholder, tag=data)
            proxy.stuff_exception(exc)
            proxy.fail(f"undecodable message: {exc}")
            return proxy
        limit = self.broker.max_message_size
        if len(data) > limit:
            error = MessageTooLarge(f"Message is {len(data)} bytes encoded, over the limit of {limit} bytes.")
            proxy.stuff_exception(error)
            proxy.fail(f"message too large: {error}")
        return proxy

    def _settle(self, proxy: MessageProxy) -> None:
        queue = self.broker._queue(self.queue_name)
        queue.unacked -= 1
        self.broker._lock.notify_all()

    def ack(self, message: MessageProxy) -> None:
        with self.broker._lock:
            self._settle(message)

    def nack(self, message: MessageProxy) -> None:
        with self.broker._lock:
            self.broker._dead_letter(message)
            self._settle(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        with self.broker._lock:
            queue = self.broker._queue(self.queue_name)
            tags = [proxy.tag for proxy in messages]
            queue.ready.extendleft(reversed(tags))  # back at the front, in their order
            queue.unacked -= len(tags)
            self.broker._lock.notify_all()

"""The systems under test: django_actors, dramatiq and Celery, side by side.

Each subject builds, on the same Redis, the same five actors with its own
public API and its usual production setup (a Redis broker, a Redis results
backend, and for dramatiq the ``GroupCallbacks`` middleware its group
callbacks need):

``noop(n)``        does nothing but count itself (drain, memory);
``echo(n)``        returns ``n``, result stored (latency);
``step(x)``        returns ``x + 1``, result stored (pipelines);
``member(n)``      does nothing (group members; Celery's chord stores their results);
``group_done()``   the group's completion callback: notes the time.

The counting is done with process-shared memory (:class:`Shared`), the same
few instructions for every system, so the figures compare the libraries and
not the bookkeeping. A worker runs in a child process started with
:func:`worker_process` (``multiprocessing`` with the spawn method).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

#: The queue every benchmark actor uses.
QUEUE = "bench"


class Shared:
    """Counters in shared memory, visible to the parent and every worker process.

    ``count`` counts ``noop`` runs; when it reaches ``target`` the time goes
    to ``end`` and ``done`` is set. ``group_done`` sets ``end`` and ``done``.
    """

    def __init__(self, context: Any) -> None:
        self.count = context.Value("q", 0)
        self.target = context.Value("q", 0)
        self.end = context.Value("d", 0.0)
        self.done = context.Event()

    def expect(self, more: int) -> None:
        """Arm ``done`` for ``more`` further noop runs."""
        with self.count.get_lock():
            self.done.clear()
            self.target.value = self.count.value + more

    def reset(self) -> None:
        with self.count.get_lock():
            self.count.value = 0
            self.target.value = 0
            self.end.value = 0.0
            self.done.clear()


#: Set in worker processes before the subject is built (the actors use it).
SHARED: Shared | None = None


def _count() -> None:
    shared = SHARED
    if shared is None:
        return
    counter = shared.count
    with counter.get_lock():
        counter.value += 1
        if counter.value == shared.target.value:
            shared.end.value = time.time()
            shared.done.set()


def _group_done() -> None:
    shared = SHARED
    if shared is not None:
        shared.end.value = time.time()
        shared.done.set()


# The actors' bodies, the same for every system.


def noop(n: int) -> None:
    _count()


def echo(n: int) -> int:
    return n


def step(x: int) -> int:
    return x + 1


def member(n: int) -> None:
    """Returns nothing: dramatiq's Results middleware logs a warning for every
    value returned by an actor that does not store results."""


def group_done(*args: Any) -> None:
    _group_done()


class Subject:
    """What the runner asks of each system. ``version`` names the library."""

    name = ""
    version = ""

    def __init__(self, url: str) -> None:
        self.url = url

    # Producer side (the benchmark's own process).
    def send(self, n: int) -> None:
        raise NotImplementedError

    def group_members(self, count: int) -> list[Any]:
        """``count`` noop messages (Celery: signatures) for :meth:`group_run`."""
        raise NotImplementedError

    def group_run(self, members: list[Any]) -> None:
        """Run ``group(members)`` (no callback)."""
        raise NotImplementedError

    def enqueue_noops(self, start: int, count: int) -> None:
        """Queue ``count`` noop messages the fastest way the public API offers."""
        raise NotImplementedError

    def round_trip(self, n: int, timeout: float) -> int:
        """Send ``echo(n)`` and block until its result is available."""
        raise NotImplementedError

    def pipeline(self, steps: int, timeout: float) -> int:
        """Run ``step(0) | step() | ...`` and block until its result is available."""
        raise NotImplementedError

    def group_with_callback(self, count: int) -> None:
        """Run a group of ``count`` members with ``group_done`` as completion callback."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""

    # Worker side (a child process).
    def run_worker(self, threads: int, started: Any, stop: Any) -> None:
        """Run a worker until ``stop`` is set; set ``started`` once it runs."""
        raise NotImplementedError


class _DramatiqAPI(Subject):
    """The subjects driven through dramatiq's API: django_actors keeps its
    names and signatures, so one set of calls serves both libraries."""

    lib: Any
    broker: Any

    def _declare_actors(self) -> None:
        self.lib.set_broker(self.broker)
        actor: Any = self.lib.actor
        opts: dict[str, Any] = {"broker": self.broker, "queue_name": QUEUE}
        self.noop = actor(noop, **opts)
        self.echo = actor(echo, store_results=True, **opts)
        self.step = actor(step, store_results=True, **opts)
        self.member = actor(member, **opts)
        self.group_done = actor(group_done, **opts)

    def send(self, n: int) -> None:
        self.noop.send(n)

    def group_members(self, count: int) -> list[Any]:
        return [self.noop.message(i) for i in range(count)]

    def group_run(self, members: list[Any]) -> None:
        self.lib.group(members, broker=self.broker).run()

    def round_trip(self, n: int, timeout: float) -> int:
        message = self.echo.send(n)
        return int(message.get_result(block=True, timeout=int(timeout * 1000)))

    def pipeline(self, steps: int, timeout: float) -> int:
        messages = [self.step.message(0), *[self.step.message() for _ in range(steps - 1)]]
        pipe = self.lib.pipeline(messages, broker=self.broker).run()
        return int(pipe.get_result(block=True, timeout=int(timeout * 1000)))

    def group_with_callback(self, count: int) -> None:
        g = self.lib.group([self.member.message(i) for i in range(count)], broker=self.broker)
        g.add_completion_callback(self.group_done.message())
        g.run()

    def close(self) -> None:
        self.broker.close()

    def run_worker(self, threads: int, started: Any, stop: Any) -> None:
        worker = self.lib.Worker(self.broker, worker_threads=threads)
        worker.start()
        started.set()
        stop.wait()
        worker.stop()
        self.close()


class DjangoActors(_DramatiqAPI):
    """django_actors: RedisBroker, the default middleware and Results on a RedisBackend."""

    name = "django_actors"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import django_actors
        from django_actors.broker import default_middleware
        from django_actors.brokers.redis import RedisBroker
        from django_actors.results import Results
        from django_actors.results.backends.redis import RedisBackend

        self.version = django_actors.__version__
        self.lib = django_actors
        self.backend = RedisBackend(url=url)
        self.broker = RedisBroker(url=url, middleware=[*default_middleware(), Results(backend=self.backend)])
        self._declare_actors()

    def enqueue_noops(self, start: int, count: int) -> None:
        for first in range(start, start + count, 1000):
            last = min(first + 1000, start + count)
            self.broker.enqueue_many([self.noop.message(i) for i in range(first, last)])

    def close(self) -> None:
        super().close()
        self.backend.close()


class Dramatiq(_DramatiqAPI):
    """dramatiq: its RedisBroker, default middleware, Results on its RedisBackend
    and GroupCallbacks (needed for group completion callbacks)."""

    name = "dramatiq"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.middleware.group_callbacks import GroupCallbacks
        from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
        from dramatiq.results import Results
        from dramatiq.results.backends import RedisBackend

        self.version = dramatiq.__version__
        self.lib = dramatiq
        self.broker = RedisBroker(url=url)
        self.broker.add_middleware(Results(backend=RedisBackend(url=url)))
        self.broker.add_middleware(GroupCallbacks(RateLimiterBackend(url=url)))
        self._declare_actors()

    def enqueue_noops(self, start: int, count: int) -> None:
        for i in range(start, start + count):  # dramatiq has no batch enqueue
            self.broker.enqueue(self.noop.message(i))


class Celery(Subject):
    """Celery: Redis broker and Redis result backend, JSON, a thread pool
    worker (``--pool threads``), otherwise its defaults (so tasks are acked
    when received, not when done: at most once)."""

    name = "celery"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import celery

        self.version = celery.__version__
        self.lib = celery
        app = celery.Celery("bench", broker=url, backend=url, set_as_current=False)
        app.conf.update(
            task_default_queue=QUEUE,
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            worker_hijack_root_logger=False,
            worker_redirect_stdouts=False,
            result_expires=600,
        )
        self.app = app
        self.noop = app.task(name="bench.noop", ignore_result=True)(noop)
        self.echo = app.task(name="bench.echo")(echo)
        self.step = app.task(name="bench.step")(step)
        self.member = app.task(name="bench.member")(member)
        self.group_done = app.task(name="bench.group_done", ignore_result=True)(group_done)

    def send(self, n: int) -> None:
        self.noop.delay(n)

    def group_members(self, count: int) -> list[Any]:
        return [self.noop.s(i) for i in range(count)]

    def group_run(self, members: list[Any]) -> None:
        self.lib.group(members).apply_async()

    def enqueue_noops(self, start: int, count: int) -> None:
        for first in range(start, start + count, 1000):
            last = min(first + 1000, start + count)
            self.lib.group(self.noop.s(i) for i in range(first, last)).apply_async()

    def round_trip(self, n: int, timeout: float) -> int:
        return int(self.echo.delay(n).get(timeout=timeout))

    def pipeline(self, steps: int, timeout: float) -> int:
        chain = self.lib.chain(self.step.s(0), *[self.step.s() for _ in range(steps - 1)])
        return int(chain.apply_async().get(timeout=timeout))

    def group_with_callback(self, count: int) -> None:
        self.lib.chord(self.member.s(i) for i in range(count))(self.group_done.si())

    def close(self) -> None:
        self.app.close()

    def run_worker(self, threads: int, started: Any, stop: Any) -> None:
        from celery.signals import worker_ready

        worker_ready.connect(lambda **_: started.set(), weak=False)

        def stop_on_request() -> None:
            stop.wait()
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown

        threading.Thread(target=stop_on_request, daemon=True).start()
        worker = self.app.Worker(
            pool="threads",
            concurrency=threads,
            loglevel="WARNING",
            quiet=True,
            without_mingle=True,
            without_gossip=True,
            without_heartbeat=True,
            hostname=f"bench-{os.getpid()}@localhost",
        )
        worker.start()


SUBJECTS: dict[str, type[Subject]] = {"django_actors": DjangoActors, "dramatiq": Dramatiq, "celery": Celery}


def worker_process(name: str, url: str, threads: int, shared: Shared, ready: Any, go: Any, started: Any,
                   stop: Any) -> None:  # fmt: skip
    """A worker process: build the subject, say ready, wait for ``go``, run."""
    global SHARED
    SHARED = shared
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*superuser privileges")  # Celery, when run as root
    subject = SUBJECTS[name](url)
    ready.set()
    go.wait()
    subject.run_worker(threads, started, stop)

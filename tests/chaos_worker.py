"""The worker process of the chaos and load tests, and the actors it runs.

``python -m tests.chaos_worker`` reads its configuration from the JSON in
``$CHAOS_CONFIG``:

  broker          "redis" or "database"
  url             the Redis URL of the broker and the results (redis)
  database        a Django ``DATABASES`` entry (database)
  record_url      the Redis URL where actors record what they ran (an
                  observation channel that the chaos does not touch)
  queue           the queue to consume
  threads         worker threads
  heartbeat_timeout  ms before a killed worker's messages are redelivered
  counting        load mode: actors count runs in memory and flush the
                  counts to ``record_url`` every 100 ms (no round trip per message)

It prints ``ready`` once it consumes; SIGTERM stops it gracefully.

Recording
---------
Every actor run does ``HINCRBY chaos:runs <unit> 1`` on ``record_url``,
where ``<unit>`` names the unit of work ("r17", "p3s1", "g4m9", "cb4"...).
A completion callback also adds the broker's handle of the message it runs
(Redis member / row id: the same for a redelivery of one enqueued message,
different for a second enqueue) to ``chaos:cb:<group>``, so a test can tell a
callback that fired twice from one that was delivered twice.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

RUNS = "chaos:runs"
#: Actor options of every chaos actor: results stored, fast retries.
OPTIONS: dict[str, Any] = {"store_results": True, "min_backoff": 100, "max_backoff": 1000}

_local = threading.local()


def callback_tags_key(group: str) -> str:
    return f"chaos:cb:{group}"


def _make_tagger() -> Any:
    from django_actors.middleware.middleware import Middleware

    class Tagger(Middleware):
        """Keeps the broker handle of the message being run, for the callbacks."""

        def before_process_message(self, broker: Any, message: Any) -> None:
            _local.tag = str(message.tag)

    return Tagger()


class Recorder:
    """Where actors record their runs: one HINCRBY per run, retried while the
    recording Redis is unreachable; or, in counting mode, counts kept in memory
    and flushed by a thread."""

    def __init__(self, url: str | None, *, counting: bool = False) -> None:
        self.client = redis.Redis.from_url(url) if url else None
        self.counting = counting
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        if counting and self.client is not None:
            threading.Thread(target=self._flusher, daemon=True).start()

    def _retry(self, operation: Callable[[], Any]) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                operation()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def run(self, unit: str) -> None:
        if self.client is None:
            return
        if self.counting:
            with self._lock:
                self._counts[unit] = self._counts.get(unit, 0) + 1
            return
        client = self.client
        self._retry(lambda: client.hincrby(RUNS, unit, 1))

    def callback(self, group: str) -> None:
        if self.client is None:
            return
        client, tag = self.client, getattr(_local, "tag", "?")

        def write() -> None:
            with client.pipeline(transaction=True) as pipe:
                pipe.hincrby(RUNS, f"cb{group}", 1).sadd(callback_tags_key(group), tag).execute()

        self._retry(write)

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        if counts and self.client is not None:
            with self.client.pipeline(transaction=False) as pipe:
                for unit, n in counts.items():
                    pipe.hincrby(RUNS, unit, n)
                pipe.execute()

    def _flusher(self) -> None:
        while True:
            time.sleep(0.1)
            self.flush()


@dataclass
class ChaosActors:
    """The actors of the chaos tests (the same names in the test and the workers)."""

    record: Any
    step: Any
    member: Any
    total: Any
    group_done: Any
    tick: Any


def declare_actors(broker: Any, queue: str, recorder: Recorder | None = None) -> ChaosActors:
    """Declare the chaos actors on ``broker``. ``recorder`` is ``None`` in the
    sending process, where the actors never run."""
    from django_actors import actor

    rec = recorder or Recorder(None)

    @actor(broker=broker, queue_name=queue, actor_name="chaos_record", **OPTIONS)
    def record(n: int) -> int:
        rec.run(f"r{n}")
        return n * 3

    @actor(broker=broker, queue_name=queue, actor_name="chaos_step", **OPTIONS)
    def step(p: str, previous: int) -> int:
        rec.run(f"p{p}s{previous}")
        return previous + 1

    @actor(broker=broker, queue_name=queue, actor_name="chaos_member", **OPTIONS)
    def member(g: str, i: int) -> int:
        rec.run(f"g{g}m{i}")
        return i * i

    @actor(broker=broker, queue_name=queue, actor_name="chaos_total", **OPTIONS)
    def total(c: str, results: list[int]) -> int:
        rec.run(f"t{c}")
        return sum(results)

    @actor(broker=broker, queue_name=queue, actor_name="chaos_group_done", **OPTIONS)
    def group_done(g: str) -> None:
        rec.callback(g)

    @actor(broker=broker, queue_name=queue, actor_name="chaos_tick", max_retries=0)
    def tick(n: int) -> None:
        rec.run("tick")

    return ChaosActors(record, step, member, total, group_done, tick)


def build_broker(config: dict[str, Any]) -> Any:
    """The broker (with default middleware, a tagger and Results) a config names."""
    from django_actors.broker import default_middleware
    from django_actors.results import Results

    middleware = [*default_middleware(), _make_tagger()]
    if config["broker"] == "redis":
        from django_actors.brokers.redis import RedisBroker
        from django_actors.results.backends.redis import RedisBackend

        middleware.append(Results(backend=RedisBackend(url=config["url"])))
        return RedisBroker(url=config["url"], middleware=middleware, heartbeat_timeout=config["heartbeat_timeout"])
    from django_actors.brokers.database import DatabaseBroker
    from django_actors.results.backends.database import DatabaseBackend

    using = config.get("using", "default")
    middleware.append(Results(backend=DatabaseBackend(using=using, poll_interval=20)))
    return DatabaseBroker(
        middleware=middleware, using=using, heartbeat_timeout=config["heartbeat_timeout"], poll_interval=20
    )


def main() -> int:
    config = json.loads(os.environ["CHAOS_CONFIG"])
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": config["database"]} if config.get("database") else {},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_actors"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DJANGO_ACTORS={"RESULTS": None, "DISCOVER": [], "MIRROR": {"ENABLED": False}},
        LOGGING_CONFIG=None,
    )
    django.setup()
    import logging

    logging.basicConfig(level=logging.WARNING, format=f"[worker {os.getpid()}] %(levelname)s %(name)s: %(message)s")

    from django_actors.worker import Worker

    broker = build_broker(config)
    recorder = Recorder(config["record_url"], counting=config.get("counting", False))
    declare_actors(broker, config["queue"], recorder)
    broker.emit_after("process_boot")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    worker = Worker(broker, worker_threads=config["threads"], worker_timeout=100)
    worker.start()
    print("ready", flush=True)
    stopping.wait()
    worker.stop(timeout=10_000)
    recorder.flush()
    broker.emit_before("process_stop")
    broker.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

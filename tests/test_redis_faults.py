"""Fault tests for the Redis broker: real worker processes killed with
SIGKILL, stopped with SIGTERM, and a redis-server (AOF on) restarted under
them. Every message must be processed at least once.

The worker processes run ``tests.redis_helpers.worker_main``: actor
``record(n)`` adds ``n`` to a Redis set and counts its runs.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis

from django_actors import Message
from django_actors.brokers.redis import RedisBroker

from .redis_helpers import RedisProcess, record_keys, spawn_worker, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.chaos]


def send_numbers(broker: RedisBroker, queue: str, numbers: range) -> None:
    broker.declare_queue(queue)
    broker.enqueue_many(
        Message(queue_name=queue, actor_name="record", args=(n,), kwargs={}, options={}) for n in numbers
    )


def counter(client: redis.Redis, key: str, command: str = "scard"):
    """A predicate helper that reads a count, treating a restarting Redis as 0."""

    def read() -> int:
        try:
            return int(getattr(client, command)(key) or 0)
        except redis.exceptions.ConnectionError:
            return 0

    return read


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_workers_killed_with_sigkill_lose_nothing(redis_url, redis_client, processes):
    queue, total = "kill", 3000
    done_key, runs_key = record_keys(queue)
    done, runs = counter(redis_client, done_key), counter(redis_client, runs_key, "get")
    producer = RedisBroker(url=redis_url, middleware=[])
    send_numbers(producer, queue, range(total))

    held_at_kill = []
    processes.append(spawn_worker(redis_url, queue=queue, threads=4, heartbeat_timeout=1000, work_ms=2))
    for kill_at in (total // 5, 2 * total // 5, 3 * total // 5):
        wait_for(lambda n=kill_at: done() >= n, 60, what=f"{kill_at} messages processed")
        processes[-1].send_signal(signal.SIGKILL)
        processes[-1].wait(10)
        held_at_kill.append(producer.stats(queue).in_flight)  # in the dead worker's ack set
        processes.append(spawn_worker(redis_url, queue=queue, threads=4, heartbeat_timeout=1000, work_ms=2))

    wait_for(lambda: done() == total, 60, what="every message processed")
    producer.join(queue, timeout=30_000)
    print(f"held at each kill: {held_at_kill}; runs: {runs()} for {total} messages")
    assert sum(held_at_kill) > 0, "the killed workers held no message: the test proved nothing"
    assert runs() >= total
    assert producer.dead_letters() == []
    # The dead workers were reaped; only the live one is registered.
    assert len(producer.workers()) == 1
    producer.close()


def test_redis_restarts_lose_nothing(tmp_path, processes):
    server = RedisProcess(tmp_path)
    server.start()
    try:
        queue, total = "restart", 3000
        done_key, runs_key = record_keys(queue)
        client = redis.Redis.from_url(server.url)
        done = counter(client, done_key)
        producer = RedisBroker(url=server.url, middleware=[], heartbeat_timeout=2000)
        send_numbers(producer, queue, range(total // 2))
        processes.append(spawn_worker(server.url, queue=queue, threads=4, heartbeat_timeout=2000, work_ms=2))

        wait_for(lambda: done() >= total // 6, 60, what="a sixth processed")
        server.restart(down_for=0.5)
        send_numbers(producer, queue, range(total // 2, total))  # the producer reconnects too
        wait_for(lambda: done() >= total // 2, 60, what="half processed")
        server.restart(down_for=1.0)

        wait_for(lambda: done() == total, 60, what="every message processed")
        producer.join(queue, timeout=30_000)
        assert counter(client, runs_key, "get")() >= total
        assert producer.dead_letters() == []
        assert processes[-1].poll() is None, "the worker process died during the restarts"
        processes[-1].send_signal(signal.SIGTERM)
        assert processes[-1].wait(10) == 0
        producer.close()
    finally:
        server.stop()


def test_sigterm_hands_back_prefetched_messages(redis_url, redis_client, processes):
    queue, total = "term", 200
    done_key, runs_key = record_keys(queue)
    done, runs = counter(redis_client, done_key), counter(redis_client, runs_key, "get")
    producer = RedisBroker(url=redis_url, middleware=[])
    send_numbers(producer, queue, range(total))
    worker = spawn_worker(redis_url, queue=queue, threads=2, prefetch=20, work_ms=50, shutdown_ms=3000)
    processes.append(worker)
    wait_for(lambda: done() >= 10, 30, what="ten messages processed")
    held = producer.stats(queue).in_flight
    assert held > 2  # prefetched beyond the two running ones

    start = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - start < 3.0
    stats = producer.stats(queue)
    assert stats.in_flight == 0  # handed back, nothing left in a dead worker's ack set
    assert stats.ready + done() == total
    assert producer.workers() == {}

    processes.append(spawn_worker(redis_url, queue=queue, threads=4))
    wait_for(lambda: done() == total, 30, what="the rest processed by the next worker")
    producer.join(queue, timeout=10_000)
    assert runs() == total  # a graceful stop processes nothing twice
    producer.close()


def test_sigterm_with_an_actor_outliving_the_shutdown_timeout(redis_url, redis_client, processes):
    queue = "overrun"
    done_key, _ = record_keys(queue)
    done = counter(redis_client, done_key)
    producer = RedisBroker(url=redis_url, middleware=[])
    send_numbers(producer, queue, range(1))
    worker = spawn_worker(redis_url, queue=queue, threads=1, work_ms=20_000, shutdown_ms=500)
    processes.append(worker)
    wait_for(lambda: producer.stats(queue).in_flight == 1, 10, what="the message to start")

    start = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - start < 2.5
    assert producer.stats(queue).ready == 1  # the unfinished message went back
    processes.append(spawn_worker(redis_url, queue=queue, threads=1))
    wait_for(lambda: done() == 1, 10, what="the redelivered message")
    producer.close()

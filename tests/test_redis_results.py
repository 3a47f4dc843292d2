"""Tests for the Redis results backend, and for composition on Redis."""

from __future__ import annotations

import threading
import time

import pytest

from django_actors import ConnectionClosed, Worker, actor, group, pipeline
from django_actors.encoder import PickleEncoder
from django_actors.results import CompositionCancelled, ResultFailure, ResultMissing, ResultTimeout
from django_actors.results.backends.redis import RedisBackend

from .redis_helpers import commandstats, make_broker, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def backend(redis_url):
    backend = RedisBackend(url=redis_url)
    yield backend
    backend.close()


# Primitives ----------------------------------------------------------------------------------


def test_store_and_get_many(backend):
    backend._store_many({"ns:a": {"r": [1, "x"]}, "ns:b": {"r": None}}, 10_000)
    assert backend._get_many(["ns:a", "ns:missing", "ns:b"]) == [{"r": [1, "x"]}, None, {"r": None}]
    assert 9_000 < backend.client.pttl("ns:a") <= 10_000


def test_records_expire(backend):
    backend._store_many({"k": {"r": 1}}, 100)
    wait_for(lambda: backend._get("k") is None, 5, what="expiry")


def test_get_result_missing_and_stored(backend):
    with pytest.raises(ResultMissing):
        backend.get_result("m1")
    backend._store_many({backend.build_message_key("m1"): {"r": 42}}, 1000)
    assert backend.get_result("m1") == 42


def test_blocking_get_wakes_without_polling(backend):
    key = backend.build_message_key("late")
    backend._store_many({"warm": {"r": 0}}, 1000)  # scripts loaded
    backend.wait("warm", timeout=10)
    got = []
    thread = threading.Thread(target=lambda: got.append(backend.get_result("late", block=True, timeout=10_000)))
    backend.client.config_resetstat()
    thread.start()
    wait_for(lambda: any(c.get("cmd") == "blpop" for c in backend.client.client_list()), what="the waiter to block")
    time.sleep(0.5)  # the waiter sits blocked; nothing should poll meanwhile
    start = time.monotonic()
    backend._store_many({key: {"r": "done"}}, 10_000)
    thread.join(5)
    assert got == ["done"]
    assert time.monotonic() - start < 1
    stats = commandstats(backend.client)
    # prepare, blpop, the store, prepare again after the wake-up: no polling loop
    assert stats.get("blpop", 0) == 1
    assert stats.get("evalsha", 0) <= 3
    assert backend.blocks_without_polling


def test_every_waiter_is_woken(backend):
    key = backend.build_message_key("shared")
    got = []
    lock = threading.Lock()

    def wait():
        value = backend.get_result("shared", block=True, timeout=10_000)
        with lock:
            got.append(value)

    threads = [threading.Thread(target=wait) for _ in range(5)]
    for thread in threads:
        thread.start()
    wait_for(lambda: int(backend.client.get(f"{key}:w") or 0) == 5, what="five registered waiters")
    backend._store_many({key: {"r": 7}}, 10_000)
    for thread in threads:
        thread.join(5)
    assert got == [7] * 5


def test_blocking_get_times_out(backend):
    start = time.monotonic()
    with pytest.raises(ResultTimeout):
        backend.get_result("never", block=True, timeout=300)
    assert 0.25 <= time.monotonic() - start < 2


def test_wait_longer_than_the_socket_timeout(redis_url):
    backend = RedisBackend(url=redis_url, socket_timeout=0.3)
    try:
        threading.Timer(1.0, backend._store_many, args=({"slow": {"r": 1}}, 5000)).start()
        assert backend.wait("slow", timeout=5000) == {"r": 1}
    finally:
        backend.close()


def test_failures_are_read_back_as_result_failure(backend):
    from django_actors import Message

    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    backend.store_exception(message, ValueError("broken"), 1000)
    with pytest.raises(ResultFailure, match="ValueError: broken"):
        backend.get_result(message)


def test_add_member_is_atomic_under_concurrency(backend):
    sizes = []
    lock = threading.Lock()

    def add(start):
        for member in range(start, start + 50):
            added, size = backend._add_member("set", member, 10_000, {f"r:{member}": {"r": member}})
            assert added
            with lock:
                sizes.append(size)

    threads = [threading.Thread(target=add, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sizes) == list(range(1, 201))
    assert backend._add_member("set", 3, 10_000) == (False, 200)
    assert backend._get("r:199") == {"r": 199}
    assert backend._count_members(["set", "nothing"]) == [200, 0]
    assert 9_000 < backend.client.pttl("set") <= 10_000


def test_count_members_is_one_round_trip(backend):
    for n in range(3):
        backend._add_member(f"s{n}", 1, 10_000)
    backend.client.config_resetstat()
    assert backend._count_members(["s0", "s1", "s2", "s3"]) == [1, 1, 1, 0]
    stats = backend.client.info("stats")
    # CONFIG RESETSTAT resets the counter; INFO itself counts once
    assert stats["total_commands_processed"] <= 6


def test_claim(backend):
    assert backend._claim("claim", "token-a", 10_000)
    assert backend._claim("claim", "token-a", 10_000)  # a redelivery of the same message
    assert not backend._claim("claim", "token-b", 10_000)
    results = []
    threads = [
        threading.Thread(target=lambda t=t: results.append(backend._claim("race", t, 10_000))) for t in "abcdefgh"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1


def test_delete_many_and_flush(backend, redis_client):
    backend._store_many({"x:1": {"r": 1}, "x:2": {"r": 2}}, 10_000)
    backend._add_member("x:set", 1, 10_000)
    redis_client.set("not-ours", b"1")
    backend._delete_many(["x:1"])
    assert backend._get_many(["x:1", "x:2"]) == [None, {"r": 2}]
    backend.flush()
    assert backend._get("x:2") is None and backend._count_members(["x:set"]) == [0]
    assert redis_client.get("not-ours") == b"1"


def test_custom_encoder(redis_url):
    backend = RedisBackend(url=redis_url, encoder=PickleEncoder())
    try:
        backend._store_many({"p": {"r": {1, 2}}}, 1000)
        assert backend._get("p") == {"r": {1, 2}}
    finally:
        backend.close()


def test_connection_errors_become_connection_closed():
    backend = RedisBackend(url="redis://127.0.0.1:1/0")
    for call in (
        lambda: backend._get("k"),
        lambda: backend._store_many({"k": {"r": 1}}, 1000),
        lambda: backend.wait("k", timeout=100),
        lambda: backend._add_member("s", 1, 1000),
        lambda: backend._count_members(["s"]),
        lambda: backend._claim("c", "t", 1000),
    ):
        with pytest.raises(ConnectionClosed):
            call()


def test_reuses_a_cache_connection(redis_url, settings):
    settings.CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    backend = RedisBackend(cache="default")
    backend._store_many({"c": {"r": 1}}, 1000)
    assert backend._get("c") == {"r": 1}


# Composition on Redis with a real Worker --------------------------------------------------------


@pytest.fixture
def redis_broker(redis_url):
    broker = make_broker(redis_url)
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    yield broker, worker
    worker.stop(timeout=5000)
    broker.close()


def test_pipeline_on_redis(redis_broker):
    broker, worker = redis_broker

    @actor(broker=broker, actor_name="add")
    def add(x, y):
        return x + y

    @actor(broker=broker, actor_name="double")
    def double(x):
        return x * 2

    worker.start()
    pipe = pipeline([add.message(1, 2), double.message(), add.message(10)], broker=broker).run()
    assert pipe.get_result(block=True, timeout=10_000) == 16
    assert pipe.get_results() == [3, 6, 16]
    assert pipe.completed and pipe.completed_count == 3


def test_group_with_completion_callback_on_redis(redis_broker):
    broker, worker = redis_broker
    called = []

    @actor(broker=broker, actor_name="square")
    def square(x):
        return x * x

    @actor(broker=broker, actor_name="summarise")
    def summarise(label, results):
        called.append((label, sorted(results)))

    worker.start()
    members = group([square.message(n) for n in range(10)], broker=broker)
    members.add_completion_callback(summarise.message("done"), with_results=True)
    members.run()
    assert members.get_results(block=True, timeout=10_000) == [n * n for n in range(10)]
    wait_for(lambda: called, 10, what="the completion callback")
    broker.join("default", timeout=10_000)
    assert called == [("done", sorted(n * n for n in range(10)))]
    assert members.completed_count == 10


def test_group_inside_pipeline_on_redis(redis_broker):
    broker, worker = redis_broker

    @actor(broker=broker, actor_name="inc")
    def inc(x):
        return x + 1

    @actor(broker=broker, actor_name="add")
    def add(x, y):
        return x + y

    @actor(broker=broker, actor_name="total")
    def total(values):
        return sum(values)

    worker.start()
    # each group member receives the first step's result (1); the last step the list of theirs
    chord = pipeline([inc.message(0), group([add.message(n) for n in range(5)]), total.message()], broker=broker)
    chord.run()
    assert chord.get_result(block=True, timeout=10_000) == sum(n + 1 for n in range(5))
    assert chord.get_results() == [1, [1, 2, 3, 4, 5], 15]
    assert chord.completed_count == 3


def test_cancel_on_redis(redis_broker):
    broker, worker = redis_broker
    ran = []

    @actor(broker=broker, actor_name="step")
    def step(n):
        ran.append(n)
        return n

    members = group([step.message(n) for n in range(5)], broker=broker).run()
    members.cancel()
    worker.start()
    broker.join("default", timeout=10_000)
    assert ran == []
    assert members.cancelled
    with pytest.raises(CompositionCancelled):
        members.wait(timeout=1000)


def test_completed_count_on_redis_grows_as_members_finish(redis_broker):
    broker, worker = redis_broker
    gate = threading.Event()

    @actor(broker=broker, actor_name="gated")
    def gated(n):
        if n >= 3:
            gate.wait(10)
        return n

    worker.start()
    members = group([gated.message(n) for n in range(6)], broker=broker).run()
    wait_for(lambda: members.completed_count == 3, 10, what="three members")
    assert not members.completed
    gate.set()
    members.wait(timeout=10_000)
    assert members.completed_count == 6 and members.completed

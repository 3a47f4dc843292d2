"""Tests for the Redis broker, against a real redis-server."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_actors import ConnectionClosed, MessageTooLarge, QueueJoinTimeout, Worker, actor
from django_actors.brokers.redis import RedisBroker
from django_actors.middleware import CurrentMessage
from django_actors.results import ResultFailure

from .redis_helpers import commandstats, make_broker, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def brokers(redis_url):
    """Build brokers on the test's Redis; every one is closed after the test."""
    made = []

    def build(**kwargs):
        broker = make_broker(redis_url, **kwargs)
        made.append(broker)
        return broker

    yield build
    for broker in made:
        broker.close()


@pytest.fixture
def broker(brokers):
    return brokers()


@pytest.fixture
def workers():
    started = []

    def start(broker, **kwargs):
        kwargs.setdefault("worker_timeout", 100)
        kwargs.setdefault("worker_threads", 4)
        worker = Worker(broker, **kwargs)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=5000)


# Enqueue and fetch -----------------------------------------------------------------------------


def test_send_fetch_ack_round_trip(broker):
    @actor(broker=broker, actor_name="echo")
    def echo(x, y=None):
        return x

    sent = echo.send(1, y="two")
    consumer = broker.consume("default", prefetch=10, timeout=500)
    [proxy] = consumer.fetch(10)
    assert (proxy.message_id, proxy.args, proxy.kwargs) == (sent.message_id, (1,), {"y": "two"})
    assert broker.stats("default").in_flight == 1
    consumer.ack(proxy)
    stats = broker.stats("default")
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
    assert broker.client.hlen(broker._queue_key("default", "msgs")) == 0


def test_fetch_waits_up_to_timeout_then_returns_empty(broker):
    broker.declare_queue("default")
    consumer = broker.consume("default", prefetch=1, timeout=200)
    start = time.monotonic()
    assert consumer.fetch(1) == []
    assert 0.15 <= time.monotonic() - start < 2


def test_blocking_fetch_wakes_on_enqueue_without_polling(broker):
    @actor(broker=broker, actor_name="wake")
    def wake():
        pass

    consumer = broker.consume("default", prefetch=1, timeout=5000)
    wake.send()
    consumer.ack(consumer.fetch(1)[0])  # the scripts are loaded
    before = commandstats(broker.client).get("evalsha", 0)
    got = []
    thread = threading.Thread(target=lambda: got.extend(consumer.fetch(1)))
    start = time.monotonic()
    thread.start()
    wait_for(lambda: any(c.get("cmd") == "blpop" for c in broker.client.client_list()), what="the consumer to block")
    time.sleep(0.3)  # the consumer sits blocked; nothing should be polling meanwhile
    wake.send()
    thread.join(5)
    assert len(got) == 1
    assert time.monotonic() - start < 3
    # One empty fetch before blocking, one after waking (plus the enqueue).
    assert commandstats(broker.client)["evalsha"] - before <= 4


def test_priorities_order_the_whole_queue(broker):
    @actor(broker=broker, actor_name="low", priority=10)
    def low(n):
        pass

    @actor(broker=broker, actor_name="high", priority=-5)
    def high(n):
        pass

    @actor(broker=broker, actor_name="normal")
    def normal(n):
        pass

    for n in range(3):
        low.send(n)
        normal.send(n)
        high.send(n)
    consumer = broker.consume("default", prefetch=20, timeout=200)
    got = [(p.actor_name, p.args[0]) for p in consumer.fetch(20)]
    assert got == [("high", 0), ("high", 1), ("high", 2), ("normal", 0), ("normal", 1), ("normal", 2),
                   ("low", 0), ("low", 1), ("low", 2)]  # fmt: skip


def test_fetch_respects_count(broker):
    @actor(broker=broker, actor_name="many")
    def many(n):
        pass

    broker.enqueue_many([many.message(n) for n in range(10)])
    consumer = broker.consume("default", prefetch=10, timeout=100)
    assert [p.args[0] for p in consumer.fetch(3)] == [0, 1, 2]
    assert [p.args[0] for p in consumer.fetch(4)] == [3, 4, 5, 6]
    assert broker.stats("default").in_flight == 7


def test_a_consumer_holds_at_most_prefetch_messages(broker):
    @actor(broker=broker, actor_name="many")
    def many(n):
        pass

    broker.enqueue_many([many.message(n) for n in range(10)])
    consumer = broker.consume("default", prefetch=3, timeout=200)
    first = consumer.fetch(10)
    assert [p.args[0] for p in first] == [0, 1, 2]
    assert consumer.fetch(10) == []  # full: nothing until something is settled
    consumer.ack(first[0])
    consumer.requeue(first[1:2])
    assert [p.args[0] for p in consumer.fetch(10)] == [1, 3]
    assert broker.stats("default").in_flight == 3
    # A full consumer that is waiting picks up as soon as another thread's ack lands.
    consumer.timeout = 5000
    threading.Timer(0.2, consumer.ack, args=(first[2],)).start()
    start = time.monotonic()
    assert [p.args[0] for p in consumer.fetch(10)] == [4]
    assert time.monotonic() - start < 2


def test_enqueue_many_uses_one_round_trip_per_thousand(broker):
    @actor(broker=broker, actor_name="bulk")
    def bulk(n):
        pass

    bulk.send(-1)  # load the script
    before = commandstats(broker.client)["evalsha"]
    broker.enqueue_many([bulk.message(n) for n in range(2500)])
    assert commandstats(broker.client)["evalsha"] - before == 3
    assert broker.stats("default").ready == 2501


def test_fetch_of_many_is_one_round_trip(broker):
    @actor(broker=broker, actor_name="bulk")
    def bulk(n):
        pass

    broker.enqueue_many([bulk.message(n) for n in range(500)])
    consumer = broker.consume("default", prefetch=500, timeout=100)
    consumer.fetch(1)
    before = commandstats(broker.client)["evalsha"]
    assert len(consumer.fetch(400)) == 400
    assert commandstats(broker.client)["evalsha"] - before == 1


def test_acks_are_batched_under_concurrency(broker, workers):
    count = 3000
    done = threading.Semaphore(0)

    @actor(broker=broker, actor_name="noop")
    def noop(n):
        done.release()

    broker.enqueue_many([noop.message(n) for n in range(count)])
    before = commandstats(broker.client)["evalsha"]
    workers(broker, worker_threads=8)
    for _ in range(count):  # waited on here, not with join(), whose polling would count too
        assert done.acquire(timeout=30)
    broker.join("default", timeout=30_000)  # the last acks are sent
    after = commandstats(broker.client)["evalsha"]
    # fetches + ack batches (+ a few join polls), far fewer than one per message
    assert after - before < count * 0.75


def test_acks_piggyback_on_the_next_fetch(broker):
    @actor(broker=broker, actor_name="noop")
    def noop(n):
        pass

    broker.enqueue_many([noop.message(n) for n in range(4)])
    consumer = broker.consume("default", prefetch=10, timeout=100)
    proxies = consumer.fetch(2)
    # Acks buffered while another thread is sending a batch are sent with the next fetch.
    consumer._flushing = True
    for proxy in proxies:
        consumer.ack(proxy)
    consumer._flushing = False
    assert consumer.pending_settlements == 2
    before = commandstats(broker.client)["evalsha"]
    assert len(consumer.fetch(2)) == 2
    assert commandstats(broker.client)["evalsha"] - before == 1
    assert consumer.pending_settlements == 0
    assert broker.stats("default").in_flight == 2


def test_a_late_ack_after_redelivery_is_ignored(brokers):
    first, second = brokers(heartbeat_timeout=200), brokers(heartbeat_timeout=200)

    @actor(broker=first, actor_name="late")
    def late():
        pass

    second.declare_actor(late)
    late.send()
    stalled = first.consume("default", prefetch=1, timeout=100)
    [proxy] = stalled.fetch(1)
    first.state.heartbeat.stop()  # the first worker stalls: no more heartbeats
    consumer = second.consume("default", prefetch=1, timeout=100)
    redelivered = wait_for(lambda: consumer.fetch(1), 10, what="the redelivery")
    assert redelivered[0].message_id == proxy.message_id
    stalled.ack(proxy)  # the stalled worker wakes up and acks: must not remove the message
    assert second.client.hexists(second._queue_key("default", "msgs"), proxy.tag)
    consumer.ack(redelivered[0])
    assert second.stats("default").in_flight == 0
    assert second.client.hlen(second._queue_key("default", "msgs")) == 0


# Delayed messages -----------------------------------------------------------------------------


def test_delayed_messages_wait_in_redis_until_due(broker):
    @actor(broker=broker, actor_name="later")
    def later(n):
        pass

    later.send_with_options(args=(1,), delay=600)
    later.send(2)
    assert broker.client.zcard(broker._queue_key("default", "delayed")) == 1
    assert broker.stats("default").delayed == 1
    consumer = broker.consume("default", prefetch=10, timeout=100)
    [now] = consumer.fetch(10)
    assert now.args == (2,)
    consumer.ack(now)
    consumer.timeout = 3000
    start = time.monotonic()
    [due] = consumer.fetch(10)
    waited = time.monotonic() - start
    assert due.args == (1,) and due.options["eta"] <= int(time.time() * 1000)
    assert waited < 2
    assert broker.stats("default").delayed == 0


def test_due_messages_are_delivered_once_to_racing_consumers(brokers):
    brokers_ = [brokers() for _ in range(4)]

    @actor(broker=brokers_[0], actor_name="race")
    def race(n):
        pass

    for other in brokers_[1:]:
        other.declare_actor(race)
    brokers_[0].enqueue_many([race.message(n) for n in range(400)], delay=200)
    got = []
    lock = threading.Lock()

    def consume(b):
        consumer = b.consume("default", prefetch=50, timeout=100)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proxies = consumer.fetch(50)
            for p in proxies:
                consumer.ack(p)
            with lock:
                got.extend(p.args[0] for p in proxies)
                if len(got) >= 400:
                    return

    threads = [threading.Thread(target=consume, args=(b,)) for b in brokers_]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(got) == list(range(400))


# Dead letters --------------------------------------------------------------------------------


def test_failed_messages_are_dead_lettered_listed_requeued_purged(broker, workers):
    attempts = []

    @actor(broker=broker, actor_name="boom", max_retries=0, store_results=True)
    def boom(n):
        attempts.append(n)
        if len(attempts) <= 2:
            raise ValueError(f"bad {n}")

    first, second = boom.send(1), boom.send(2)
    workers(broker, worker_threads=1)
    broker.join("default", timeout=10_000)
    letters = broker.dead_letters()
    assert {d.message_id for d in letters} == {first.message_id, second.message_id}
    assert all(d.queue_name == "default" and "ValueError: bad" in d.reason for d in letters)
    assert {d.message.args for d in letters} == {(1,), (2,)}
    assert letters[0].died_at >= letters[1].died_at
    assert broker.dead_letters("default", limit=1) == letters[:1]
    assert broker.stats("default").dead == 2
    with pytest.raises(ResultFailure):
        first.get_result(backend=broker.get_results_backend())

    assert broker.requeue_dead_letters([first.message_id]) == 1
    broker.join("default", timeout=10_000)
    assert sorted(attempts) == [1, 1, 2]
    assert [d.message_id for d in broker.dead_letters()] == [second.message_id]
    assert broker.purge_dead_letters() == 1
    assert broker.dead_letters() == []
    assert broker.stats("default").dead == 0


def test_dead_letters_expire_after_their_ttl(brokers):
    broker = brokers(dead_message_ttl=300)

    @actor(broker=broker, actor_name="doomed")
    def doomed():
        pass

    doomed.send()
    consumer = broker.consume("default", prefetch=1, timeout=100)
    [proxy] = consumer.fetch(1)
    proxy.fail("no good")
    consumer.nack(proxy)
    [letter] = broker.dead_letters()
    assert letter.reason == "no good"
    wait_for(lambda: broker.dead_letters() == [], 5, what="the dead letter to expire")
    assert broker.requeue_dead_letters() == 0


def test_requeue_all_dead_letters_keeps_payloads(broker):
    broker.declare_queue("default")
    broker.put_raw("default", b"not a message")
    consumer = broker.consume("default", prefetch=1, timeout=100)
    [proxy] = consumer.fetch(1)
    assert proxy.failed
    consumer.nack(proxy)
    assert broker.requeue_dead_letters() == 1
    [again] = consumer.fetch(1)
    assert again.failed and again.message_id == proxy.message_id is not None
    consumer.nack(again)
    assert [d.data for d in broker.dead_letters()] == [b"not a message"]


# Bad input -------------------------------------------------------------------------------------


def test_undecodable_payloads_are_dead_lettered_and_the_worker_goes_on(broker, workers):
    done = []

    @actor(broker=broker, actor_name="good")
    def good(n):
        done.append(n)

    broker.put_raw("default", b"\xff\xfe garbage")
    broker.put_raw("default", b'{"message_id": "abc", "args": 3}')
    good.send(1)
    workers(broker)
    broker.join("default", timeout=10_000)
    assert done == [1]
    letters = {d.message_id: d for d in broker.dead_letters()}
    assert len(letters) == 2
    assert "abc" in letters and "missing field" in letters["abc"].reason
    assert all(d.message is None and d.reason.startswith("undecodable message") for d in letters.values())
    # A caller waiting on the message whose id could be read gets a failure, not a hang.
    with pytest.raises(ResultFailure):
        broker.get_results_backend().get_result("abc", block=True, timeout=1000)


def test_junk_pushed_onto_the_queue_key_is_adopted(broker, workers):
    done = []

    @actor(broker=broker, actor_name="good")
    def good(n):
        done.append(n)

    key = broker._queue_key("default")
    broker.client.lpush(key, b"junk", good.message(7).encode())
    workers(broker)
    broker.join("default", timeout=10_000)
    assert done == [7]
    assert [d.data for d in broker.dead_letters()] == [b"junk"]
    good.send(8)  # the key is a normal queue again
    broker.join("default", timeout=10_000)
    assert done == [7, 8]


def test_a_foreign_value_at_the_queue_key_is_renamed_aside(broker):
    @actor(broker=broker, actor_name="good")
    def good(n):
        pass

    broker.client.set(broker._queue_key("default"), b"something else")
    consumer = broker.consume("default", prefetch=1, timeout=100)
    assert consumer.fetch(1) == []
    [aside] = broker.client.keys(broker._queue_key("default", "foreign:*"))
    assert broker.client.get(aside) == b"something else"
    good.send(1)
    assert [p.args for p in consumer.fetch(1)] == [(1,)]


def test_a_send_onto_a_queue_key_someone_pushed_onto_adopts_the_list_and_stores_the_message(broker, workers):
    done = []

    @actor(broker=broker, actor_name="good")
    def good(n):
        done.append(n)

    broker.client.lpush(broker._queue_key("default"), b"junk", good.message(7).encode())
    good.send(8)  # not a WRONGTYPE error
    broker.enqueue_many([good.message(9), good.message(10)])
    workers(broker)
    broker.join("default", timeout=10_000)
    assert sorted(done) == [7, 8, 9, 10]
    assert [d.data for d in broker.dead_letters()] == [b"junk"]


@pytest.mark.parametrize(
    ("suffix", "garbage"),
    [("", "string"), ("msgs", "string"), ("delayed", "list"), ("notify", "string"), ("seq", "text"), ("seq", "list")],
)
def test_sends_onto_keys_holding_foreign_values_move_them_aside_and_lose_nothing(broker, workers, suffix, garbage):
    done = []

    @actor(broker=broker, actor_name="good")
    def good(n):
        done.append(n)

    key = broker._key("seq") if suffix == "seq" else broker._queue_key("default", suffix)
    if garbage == "list":
        broker.client.rpush(key, b"a", b"b")
    else:
        broker.client.set(key, b"not a number" if garbage == "text" else b"something else")
    good.send(1)
    good.send_with_options(args=(2,), delay=1)
    broker.enqueue_many([good.message(n) for n in range(3, 1503)])  # two pipelined chunks
    workers(broker)
    broker.join("default", timeout=20_000)
    assert sorted(done) == list(range(1, 1503))  # each once: a failed chunk is not sent twice
    [aside] = broker.client.keys(key + ":foreign:*")
    assert broker.client.type(aside) == (b"list" if garbage == "list" else b"string")
    assert broker.dead_letters() == []


def test_the_queue_registry_holding_a_foreign_value_does_not_fail_a_send_that_stored_its_message(broker, workers):
    done = []

    @actor(broker=broker, actor_name="good")
    def good(n):
        done.append(n)

    broker.client.set(broker._key("queues"), b"junk")
    good.send(1)  # stored before the registry write failed: not sent twice
    broker.enqueue_many([good.message(2), good.message(3)])
    workers(broker)
    broker.join("default", timeout=10_000)
    assert sorted(done) == [1, 2, 3]
    assert broker.client.type(broker._key("queues")) == b"set"
    assert broker.client.keys(broker._key("queues") + ":foreign:*")


def test_members_without_payload_are_skipped(broker):
    @actor(broker=broker, actor_name="good")
    def good(n):
        pass

    broker.client.zadd(broker._queue_key("default"), {"0000000000000000:0": 0})
    good.send(1)
    consumer = broker.consume("default", prefetch=5, timeout=100)
    assert [p.args for p in consumer.fetch(5)] == [(1,)]
    assert broker.stats("default").in_flight == 1


def test_max_message_size_is_checked_at_send_and_at_receive(brokers):
    small = brokers(max_message_size=200)
    large = brokers()

    @actor(broker=small, actor_name="sized")
    def sized(text):
        pass

    with pytest.raises(MessageTooLarge):
        sized.send("x" * 500)
    assert small.stats("default").ready == 0
    large.declare_actor(sized)
    big = large.enqueue(sized.message("y" * 500))
    consumer = small.consume("default", prefetch=1, timeout=100)
    [proxy] = consumer.fetch(1)
    assert proxy.failed and proxy.message_id == big.message_id
    assert "too large" in proxy.fail_reason
    consumer.nack(proxy)
    [letter] = small.dead_letters()
    assert letter.message_id == big.message_id and letter.message.args == ("y" * 500,)


# Heartbeats and redelivery --------------------------------------------------------------------


def test_unacked_messages_of_a_dead_worker_are_redelivered(brokers):
    dead, alive = brokers(heartbeat_timeout=300), brokers(heartbeat_timeout=300)

    @actor(broker=dead, actor_name="orphan")
    def orphan(n):
        pass

    alive.declare_actor(orphan)
    dead.enqueue_many([orphan.message(n) for n in range(5)])
    lost = dead.consume("default", prefetch=5, timeout=100)
    assert len(lost.fetch(3)) == 3
    dead.state.heartbeat.stop()  # as if the process had been killed
    consumer = alive.consume("default", prefetch=10, timeout=100)
    got = []
    wait_for(lambda: got.extend(consumer.fetch(10)) or len(got) == 5, 10, what="all five messages")
    assert sorted(p.args[0] for p in got) == [0, 1, 2, 3, 4]
    assert dead.worker_id not in alive.workers()


def test_a_long_running_actor_is_not_taken_for_a_dead_worker(brokers, workers):
    slow_broker, other = brokers(heartbeat_timeout=300), brokers(heartbeat_timeout=300)
    runs = []
    started = threading.Event()

    @actor(broker=slow_broker, actor_name="slow")
    def slow():
        runs.append(1)
        started.set()
        time.sleep(1.5)  # the work: five heartbeat timeouts long

    other.declare_actor(slow)
    slow.send()
    workers(slow_broker, worker_threads=1)
    assert started.wait(5)
    consumer = other.consume("default", prefetch=1, timeout=100)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        assert consumer.fetch(1) == []
    slow_broker.join("default", timeout=5000)
    assert runs == [1]


def test_close_hands_back_held_messages_and_deregisters(brokers):
    first, second = brokers(), brokers()

    @actor(broker=first, actor_name="held")
    def held(n):
        pass

    second.declare_actor(held)
    held.send(1)
    consumer = first.consume("default", prefetch=1, timeout=100)
    assert len(consumer.fetch(1)) == 1
    assert first.worker_id in second.workers()
    first.close()
    assert first.worker_id not in second.workers()
    assert second.stats("default").ready == 1


def test_lost_fetch_reply_is_resynchronised(broker):
    @actor(broker=broker, actor_name="lost")
    def lost(n):
        pass

    lost.send(1)
    consumer = broker.consume("default", prefetch=1, timeout=100)
    assert consumer.fetch(1)
    consumer._held.clear()  # the reply of that fetch never arrived
    consumer._needs_resync = True
    [again] = consumer.fetch(1)
    assert again.args == (1,)
    consumer.ack(again)
    assert broker.stats("default").in_flight == 0


def test_requeue_hands_messages_back_to_the_front(broker):
    @actor(broker=broker, actor_name="order")
    def order(n):
        pass

    broker.enqueue_many([order.message(n) for n in range(4)])
    consumer = broker.consume("default", prefetch=4, timeout=100)
    first_two = consumer.fetch(2)
    consumer.requeue(first_two)
    assert [p.args[0] for p in consumer.fetch(4)] == [0, 1, 2, 3]


# Queues -------------------------------------------------------------------------------------


def test_join_waits_for_in_flight_and_times_out(broker):
    @actor(broker=broker, actor_name="joined")
    def joined():
        pass

    joined.send()
    consumer = broker.consume("default", prefetch=1, timeout=100)
    [proxy] = consumer.fetch(1)
    with pytest.raises(QueueJoinTimeout, match="1 in flight"):
        broker.join("default", timeout=100)
    threading.Timer(0.1, consumer.ack, args=(proxy,)).start()
    broker.join("default", timeout=5000)


def test_flush_and_flush_all(broker):
    @actor(broker=broker, actor_name="a")
    def a():
        pass

    @actor(broker=broker, actor_name="b", queue_name="other")
    def b():
        pass

    a.send()
    a.send_with_options(delay=60_000)
    b.send()
    consumer = broker.consume("other", prefetch=1, timeout=100)
    [proxy] = consumer.fetch(1)
    proxy.fail("x")
    consumer.nack(proxy)
    b.send()
    broker.flush("default")
    assert broker.stats("default") == broker.stats("default").__class__(ready=0, delayed=0, in_flight=0, dead=0)
    assert broker.stats("other").ready == 1
    broker.flush_all()
    stats = broker.stats("other")
    assert (stats.ready, stats.dead) == (0, 0)


def test_no_keys_or_scan_commands(broker, workers):
    broker.client.config_resetstat()
    @actor(broker=broker, actor_name="any", store_results=True)
    def anything(n):
        if n == 0:
            raise ValueError("x")
        return n

    anything.send_with_options(args=(0,), max_retries=0)
    anything.send_with_options(args=(1,), delay=10)
    workers(broker)
    broker.join("default", timeout=10_000)
    broker.dead_letters()
    broker.requeue_dead_letters()
    broker.purge_dead_letters()
    broker.flush_all()
    broker.get_results_backend().flush()
    stats = commandstats(broker.client)
    assert "keys" not in stats and "scan" not in stats


# Connections --------------------------------------------------------------------------------


def test_connection_errors_become_connection_closed():
    broker = RedisBroker(url="redis://127.0.0.1:1/0", middleware=[])

    @actor(broker=broker, actor_name="nowhere")
    def nowhere():
        pass

    with pytest.raises(ConnectionClosed):
        nowhere.send()
    with pytest.raises(ConnectionClosed):
        broker.consume("default")
    broker.close()


def test_bad_connection_arguments_are_clear(redis_url):
    with pytest.raises(ValueError, match="only one of"):
        RedisBroker(url=redis_url, client=redis.Redis())
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisBroker(client="redis://x")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBroker(client=redis.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        RedisBroker(url=redis_url, heartbeat_timeout=0)


def test_reuses_a_django_redis_cache_connection(redis_url):
    caches = {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url},
        "builtin": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url},
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with override_settings(CACHES=caches):
        from django.core.cache import caches as django_caches

        for alias in ("default", "builtin"):
            broker = RedisBroker(cache=alias, middleware=[])

            @actor(broker=broker, actor_name=f"cached_{alias}")
            def cached():
                pass

            cached.send()
            assert broker.stats("default").ready == 1
            broker.flush_all()
            broker.close()
        django_caches["default"].set("still", "works")  # the cache's pool was not closed
        assert django_caches["default"].get("still") == "works"
        with pytest.raises(ImproperlyConfigured, match="not a Redis cache"):
            RedisBroker(cache="local").client  # noqa: B018
        with pytest.raises(ImproperlyConfigured, match="no CACHES"):
            RedisBroker(cache="missing").client  # noqa: B018


def test_built_from_django_settings(redis_url):
    from django_actors.conf import build_broker, parse_settings
    from django_actors.results.backends.redis import RedisBackend

    config = parse_settings(
        {
            "BROKER": {"BACKEND": "django_actors.brokers.redis.RedisBroker", "OPTIONS": {"url": redis_url}},
            "RESULTS": {"BACKEND": "django_actors.results.backends.redis.RedisBackend", "OPTIONS": {"url": redis_url}},
        }
    )
    broker = build_broker(config)
    try:
        assert isinstance(broker, RedisBroker)
        assert isinstance(broker.get_results_backend(), RedisBackend)
    finally:
        broker.close()


def _child(broker, queue, out):
    try:
        @actor(broker=broker, actor_name="forked")
        def forked(n):
            pass

        forked.send(os.getpid())
        consumer = broker.consume("default", prefetch=1, timeout=1000)
        [proxy] = consumer.fetch(1)
        consumer.ack(proxy)
        out.put((broker.worker_id, broker.client.client_id(), proxy.args[0]))
        broker.close()
    except Exception as exc:  # pragma: no cover - reported to the parent
        out.put(repr(exc))


def test_fork_gets_its_own_connection_worker_id_and_heartbeat(broker):
    broker.declare_queue("default")
    broker.consume("default", prefetch=1, timeout=100)
    parent_id, parent_client = broker.worker_id, broker.client.client_id()
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child, args=(broker, "default", out))
    child.start()
    result = out.get(timeout=20)
    child.join(10)
    assert child.exitcode == 0, result
    child_worker, child_client, sent_by = result
    assert child_worker != parent_id and child_client != parent_client and sent_by == child.pid
    assert broker.client.client_id() == parent_client  # the parent's connection is untouched
    assert parent_id in broker.workers() and child_worker not in broker.workers()
    assert broker.state.heartbeat.is_alive()


def test_current_message_is_available(broker, workers):
    seen = []

    @actor(broker=broker, actor_name="who")
    def who():
        seen.append(CurrentMessage.get_current_message().message_id)

    sent = who.send()
    workers(broker)
    broker.join("default", timeout=5000)
    assert seen == [sent.message_id]

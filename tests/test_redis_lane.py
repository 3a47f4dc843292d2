"""Tests for the Redis lane, which runs the Redis broker's and results
backend's scripts, against a real redis-server."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis

from django_actors import ConnectionClosed, actor
from django_actors.middleware.time_limit import raise_in_thread
from django_actors.redis_connection import Lane, LaneScript, RedisConnection

from .redis_helpers import make_broker, wait_for

pytestmark = pytest.mark.redis


class Interrupted(BaseException):
    """Raised asynchronously in a thread, as a time limit would be."""


@pytest.fixture
def connection(redis_url):
    made = RedisConnection(url=redis_url)
    yield made
    made.close()


def _client_ids(redis_client):
    return {int(entry["id"]) for entry in redis_client.client_list()}


def test_scripts_run_through_the_lane_and_survive_a_script_flush(redis_url, redis_client):
    broker = make_broker(redis_url)
    try:

        @actor(broker=broker, actor_name="flushed")
        def flushed(n):
            pass

        flushed.send(1)
        redis_client.script_flush()  # as after a Redis restart
        flushed.send(2)
        consumer = broker.consume("default", prefetch=10, timeout=100)
        assert sorted(proxy.args[0] for proxy in consumer.fetch(10)) == [1, 2]
        lane = broker.connection.lane()
        assert lane is not None and lane._idle  # the scripts ran on the lane's connections
    finally:
        broker.close()


def test_an_idle_connection_closed_by_the_server_is_replaced_before_use(connection, redis_client):
    lane = connection.lane()
    assert lane is not None
    first = lane.execute("CLIENT", "ID")
    redis_client.client_kill_filter(_id=first)  # as a Redis restart or idle timeout would
    wait_for(lambda: first not in _client_ids(redis_client), what="the kill")
    second = lane.execute("CLIENT", "ID")  # not a "connection closed" error
    assert second != first


def test_a_timed_out_command_never_leaves_its_reply_to_the_next_one(redis_url, redis_client):
    connection = RedisConnection(url=redis_url, options={"socket_timeout": 0.2})
    try:
        lane = connection.lane()
        assert lane is not None
        with pytest.raises(redis.exceptions.TimeoutError):
            lane.execute("BLPOP", "lane:list", 2)
        redis_client.rpush("lane:list", b"value")
        assert lane.execute("PING") in (b"PONG", True)
        assert redis_client.lrange("lane:list", 0, -1) == [b"value"]  # the abandoned BLPOP took nothing
    finally:
        connection.close()


def test_a_command_interrupted_mid_way_closes_its_connection(connection, redis_client):
    lane = connection.lane()
    assert lane is not None
    lane.execute("PING")
    [before] = lane._idle
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            lane.execute("BLPOP", "lane:wake", 5)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    wait_for(lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()), what="the BLPOP")
    # The interruption lands as soon as the thread is back in Python: after
    # the reply arrived on the socket, before it was handed to the caller.
    assert raise_in_thread(thread.ident, Interrupted)
    redis_client.rpush("lane:wake", b"token")
    thread.join(5)
    assert outcome and isinstance(outcome[0], Interrupted)
    assert before not in lane._idle and before.connection._sock is None  # closed, not reused
    assert lane.execute("ECHO", "mine") == b"mine"  # not the BLPOP's reply


def test_concurrent_commands_use_separate_connections(connection):
    lane = connection.lane()
    assert lane is not None
    errors: list[BaseException] = []

    def echo(n: int) -> None:
        try:
            for i in range(200):
                assert lane.execute("ECHO", f"{n}:{i}") == f"{n}:{i}".encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=echo, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert 1 <= len(lane._idle) <= 8


def test_close_disconnects_the_lane(redis_url, redis_client):
    connection = RedisConnection(url=redis_url)
    lane = connection.lane()
    assert lane is not None
    client_id = lane.execute("CLIENT", "ID")
    assert client_id in _client_ids(redis_client)
    connection.close()
    wait_for(lambda: client_id not in _client_ids(redis_client), what="the lane's connection to close")
    assert connection.lane() is not lane  # a new client and lane after close


def _child_ids(connection, out):
    lane = connection.lane()
    out.put((lane.execute("CLIENT", "ID"), len(lane._idle)))


def test_a_forked_child_never_uses_the_parents_connections(connection):
    lane = connection.lane()
    parent_id = lane.execute("CLIENT", "ID")
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child_ids, args=(connection, out))
    child.start()
    child_id, idle_in_child = out.get(timeout=20)
    child.join(10)
    assert child.exitcode == 0
    assert child_id != parent_id and idle_in_child == 1
    assert lane.execute("CLIENT", "ID") == parent_id  # the parent's connection still works


def test_a_caching_client_gets_no_lane_and_scripts_go_through_the_client(redis_client):
    try:
        from redis.cache import CacheConfig
    except ImportError:  # redis-py without client-side caching
        pass
    else:
        caching = redis.Redis(protocol=3, cache_config=CacheConfig())
        assert Lane.for_client(caching) is None  # its pool wraps connections in a cache
    script = LaneScript(redis_client.register_script("return ARGV[1]"), None)
    assert script(keys=["k"], args=["through the client"]) == b"through the client"


def test_send_to_an_unreachable_redis_is_connection_closed():
    from django_actors.brokers.redis import RedisBroker

    broker = RedisBroker(url="redis://127.0.0.1:1/0", middleware=[])

    @actor(broker=broker, actor_name="nowhere")
    def nowhere():
        pass

    with pytest.raises(ConnectionClosed, match="enqueueing to 'default'"):
        nowhere.send()
    broker.close()


def test_error_replies_are_redis_py_exceptions_and_leave_the_connection_usable(connection):
    lane = connection.lane()
    assert lane is not None
    with pytest.raises(redis.exceptions.NoScriptError):
        lane.execute("EVALSHA", "0" * 40, 0)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        lane.execute("NO-SUCH-COMMAND")
    assert lane.execute("ECHO", "still fine") == b"still fine"
    assert len(lane._idle) == 1


def test_replies_larger_than_the_read_buffer_arrive_whole(connection):
    lane = connection.lane()
    assert lane is not None
    value = bytes(range(256)) * 8192  # 2 MiB
    assert lane.execute("ECHO", value) == value
    assert lane.execute("EVAL", "return {ARGV[1], false, 42}", 0, value) == [value, None, 42]


def test_without_hiredis_the_lane_goes_through_redis_py(redis_url, monkeypatch):
    import django_actors.redis_connection as module

    monkeypatch.setattr(module, "_RAW", False)
    broker = make_broker(redis_url)
    try:

        @actor(broker=broker, actor_name="plain")
        def plain(n):
            pass

        plain.send(1)
        [proxy] = broker.consume("default", prefetch=1, timeout=100).fetch(1)
        assert proxy.args == (1,)
        lane = broker.connection.lane()
        assert lane is not None and all(c.buffer is None for c in lane._idle)
        with pytest.raises(redis.exceptions.NoScriptError):
            lane.execute("EVALSHA", "0" * 40, 0)
        assert lane.execute("ECHO", "ok") == b"ok"
    finally:
        broker.close()


def test_a_lane_dropped_without_close_closes_its_connections(redis_url, redis_client):
    import gc

    connection = RedisConnection(url=redis_url)
    client_id = connection.lane().execute("CLIENT", "ID")
    assert client_id in _client_ids(redis_client)
    del connection
    gc.collect()
    wait_for(lambda: client_id not in _client_ids(redis_client), what="the dropped lane's connection to close")


def test_pipelined_commands_reply_in_order_with_errors_returned(connection):
    lane = connection.lane()
    assert lane is not None
    big = b"x" * 300_000
    replies = lane.execute_many([("ECHO", "a"), ("NO-SUCH-COMMAND",), ("ECHO", big), ("INCR", "lane:n")])
    assert replies[0] == b"a" and replies[2] == big and replies[3] == 1
    assert isinstance(replies[1], redis.exceptions.ResponseError)
    assert lane.execute("ECHO", "after") == b"after" and len(lane._idle) == 1


def test_pipelined_script_calls_survive_a_script_flush(connection, redis_client):
    script = connection.register_script("return redis.call('incrby', KEYS[1], ARGV[1])")
    assert script(keys=["lane:sum"], args=[1]) == 1
    redis_client.script_flush()
    assert script.call_many([(["lane:sum"], [10]), (["lane:sum"], [100])]) == [11, 111]
    failing = connection.register_script("return redis.call('incr', KEYS[1])")
    redis_client.set("lane:text", "not a number")
    with pytest.raises(redis.exceptions.ResponseError):
        failing.call_many([(["lane:count"], []), (["lane:text"], []), (["lane:count"], [])])
    assert redis_client.get("lane:count") == b"2"  # the calls around the failed one ran


def test_a_spinning_call_gets_its_reply_whether_it_comes_during_the_spin_or_after(connection, redis_client):
    lane = connection.lane()
    assert lane is not None
    assert lane.execute("ECHO", "quick", spin=0.005) == b"quick"  # answered within the spin
    # BLPOP answers when another client pushes, well after a 100 us spin:
    # the call then sleeps on the socket and still returns that reply.
    pusher = threading.Thread(
        target=lambda: (
            wait_for(lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()), what="the BLPOP"),
            redis_client.rpush("lane:late", b"late"),
        )
    )
    pusher.start()
    assert lane.execute("BLPOP", "lane:late", 5, spin=0.0001) == [b"lane:late", b"late"]
    pusher.join(5)
    assert lane.execute("ECHO", "next", spin=0.0001) == b"next"  # nothing left over for the next call
    assert len(lane._idle) == 1


def test_a_connection_whose_replies_come_after_the_spin_backs_off_and_tries_again(connection):
    lane = connection.lane()
    assert lane is not None
    slow = ("BLPOP", "lane:never", 0.01)  # answers nil after 10 ms: every spin of 50 us misses
    assert lane.execute(*slow, spin=0.00005) is None
    [conn] = lane._idle
    assert (conn.spin_misses, conn.spin_skip) == (1, 0)  # one miss is forgiven
    lane.execute(*slow, spin=0.00005)
    assert (conn.spin_misses, conn.spin_skip) == (2, 1)
    lane.execute(*slow, spin=0.00005)  # skipped: no spin, no new miss
    assert (conn.spin_misses, conn.spin_skip) == (2, 0)
    lane.execute(*slow, spin=0.00005)
    assert (conn.spin_misses, conn.spin_skip) == (3, 2)  # the pause doubles
    for _ in range(2):
        lane.execute("PING", spin=0.00005)
    assert (conn.spin_misses, conn.spin_skip) == (3, 0)
    assert lane.execute("ECHO", "fast", spin=0.05) == b"fast"  # a reply within the spin: back to spinning
    assert (conn.spin_misses, conn.spin_skip) == (0, 0)
    for _ in range(40):  # however many misses, the pause stays bounded
        conn.spin_skip = 0
        lane.execute(*slow, spin=0.00005)
    assert conn.spin_skip == 1024


def test_the_redis_broker_spins_only_for_enqueueing_and_checks_spin_wait(redis_url):
    from django_actors.brokers.redis import RedisBroker

    broker = make_broker(redis_url, spin_wait=300)
    try:
        scripts = broker.scripts
        assert scripts.enqueue_one.spin == scripts.enqueue.spin == pytest.approx(0.0003)
        assert scripts.fetch.spin == scripts.ack.spin == scripts.heartbeat.spin == 0
    finally:
        broker.close()
    off = make_broker(redis_url, spin_wait=0)
    try:
        assert off.scripts.enqueue_one.spin == 0
    finally:
        off.close()
    for bad in (-1, 10_001, 1.5, True, "200"):
        with pytest.raises(ValueError, match="spin_wait must be a number of microseconds"):
            RedisBroker(url=redis_url, spin_wait=bad)

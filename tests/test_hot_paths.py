"""Tests for the shortcuts on the send() and group.run() paths (the
benchmarks' hot paths), on the Redis broker against a real redis-server."""

from __future__ import annotations

import uuid

import pytest

from django_actors import actor, group, pipeline
from django_actors.composition import BATCH_SIZE, OPTION
from django_actors.message import generate_unique_id
from django_actors.middleware import Middleware

from .redis_helpers import make_broker

pytestmark = pytest.mark.redis


@pytest.fixture
def broker(redis_url):
    made = make_broker(redis_url)
    yield made
    made.close()


def _meta_key(broker, composition_id):
    backend = broker.get_results_backend()
    return f"{backend.namespace}:c:{composition_id}:meta"


def test_enqueue_hooks_run_and_stop_the_send(redis_url):
    seen: list[str] = []

    class Veto(Middleware):
        def before_enqueue(self, broker, message, delay):
            seen.append("before")
            if message.args == (13,):
                raise ValueError("unlucky")

        def after_enqueue(self, broker, message, delay):
            seen.append("after")

    broker = make_broker(redis_url)
    broker.add_middleware(Veto())
    try:

        @actor(broker=broker, actor_name="vetoed", queue_name="fresh")
        def vetoed(n):
            pass

        vetoed.send(1)
        with pytest.raises(ValueError, match="unlucky"):
            vetoed.send(13)
        assert seen == ["before", "after", "before"]
        assert broker.stats("fresh").ready == 1
        assert "fresh" in broker.get_declared_queues()
    finally:
        broker.close()


def test_message_ids_are_random_uuid4_strings():
    ids = {generate_unique_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_group_larger_than_a_batch_sends_nothing_when_a_late_member_cannot_be_encoded(broker):
    @actor(broker=broker, actor_name="member", queue_name="wide")
    def member(value):
        pass

    size = BATCH_SIZE + BATCH_SIZE // 2
    children = [member.message(n) for n in range(size - 1)] + [member.message(object())]
    g = group(children, broker=broker)
    with pytest.raises(TypeError, match="positional argument 0"):
        g.run()
    assert broker.stats("wide").ready == 0
    backend = broker.get_results_backend()
    assert backend._get(_meta_key(broker, g.id)) is None  # nothing stored either


def test_a_hook_vetoing_a_late_member_stops_the_whole_group(broker):
    class Veto(Middleware):
        def before_enqueue(self, broker, message, delay):
            if message.args == (BATCH_SIZE + 10,):
                raise ValueError("not this one")

    broker.add_middleware(Veto())

    @actor(broker=broker, actor_name="member", queue_name="vetoed")
    def member(value):
        pass

    g = group([member.message(n) for n in range(BATCH_SIZE + 20)], broker=broker)
    with pytest.raises(ValueError, match="not this one"):
        g.run()
    assert broker.stats("vetoed").ready == 0
    assert broker.get_results_backend()._get(_meta_key(broker, g.id)) is None


def test_a_large_group_arrives_whole_and_in_order(broker):
    @actor(broker=broker, actor_name="member", queue_name="whole")
    def member(value):
        pass

    size = 2 * BATCH_SIZE + 7
    children = [member.message(n) for n in range(size)]
    g = group(children, broker=broker).run()
    consumer = broker.consume("whole", prefetch=size, timeout=100)
    fetched = []
    while len(fetched) < size:
        batch = consumer.fetch(size)
        assert batch, f"only {len(fetched)} of {size} arrived"
        fetched.extend(batch)
    assert [proxy.args[0] for proxy in fetched] == list(range(size))
    assert [proxy.message_id for proxy in fetched] == [m.message_id for m in children]
    assert [proxy.options[OPTION]["pos"] for proxy in fetched] == list(range(size))
    assert {proxy.options[OPTION]["id"] for proxy in fetched} == {g.id}
    for proxy in fetched:
        consumer.ack(proxy)


def test_a_delayed_group_is_delayed_in_redis(broker):
    @actor(broker=broker, actor_name="member", queue_name="later")
    def member(value):
        pass

    group([member.message(n) for n in range(5)], broker=broker).run(delay=60_000)
    stats = broker.stats("later")
    assert (stats.ready, stats.delayed) == (0, 5)


def test_a_pipeline_runs_end_to_end(broker):
    from django_actors import Worker

    @actor(broker=broker, actor_name="add_one", queue_name="steps", store_results=True)
    def add_one(value):
        return value + 1

    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        p = pipeline([add_one.message(0), *[add_one.message() for _ in range(9)]], broker=broker).run()
        assert p.get_result(block=True, timeout=10_000) == 10
    finally:
        worker.stop(timeout=5_000)


def test_send_goes_through_a_subclass_send_with_options(broker):
    from django_actors import Actor

    class Tagged(Actor):
        def send_with_options(self, *, args=(), kwargs=None, delay=None, **options):
            options.setdefault("max_retries", 1)
            return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)

    @actor(broker=broker, actor_name="tagged", queue_name="tagged", actor_class=Tagged)
    def tagged(n):
        pass

    @actor(broker=broker, actor_name="plain", queue_name="tagged")
    def plain(n):
        pass

    assert tagged.send(1).options == {"max_retries": 1}
    sent = plain.send(2, x=3)
    assert (sent.args, sent.kwargs, sent.options) == ((2,), {"x": 3}, {})
    [first, second] = broker.consume("tagged", prefetch=2, timeout=100).fetch(2)
    assert first.options == {"max_retries": 1} and second.args == (2,) and second.kwargs == {"x": 3}

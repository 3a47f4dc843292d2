"""Brokers and the worker as code moving over from dramatiq expects them:
add_middleware's errors and warning, MessageProxy equality, the worker's
queue_prefetch and per-thread pause, how unknown actors and rate limits are
reported, the stub queue's queue.Queue-like surface, fail_fast_default, the
RabbitmqBroker placeholder, and Redis consumers given a message they never
fetched."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import django_actors.worker as worker_module
from django_actors import ActorNotFound, Message, Middleware, RateLimitExceeded, Worker, actor
from django_actors.broker import BeforeAndAfter, MessageProxy
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import AgeLimit, Retries, TimeLimit

from .redis_helpers import make_broker, wait_for


@pytest.fixture
def broker():
    broker = StubBroker()
    yield broker
    broker.close()


@pytest.fixture
def start_worker(broker):
    workers = []

    def start(**kwargs):
        kwargs.setdefault("worker_timeout", 50)
        worker = Worker(broker, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5000)


def pause_threads(worker):
    for thread in worker.workers:
        thread.pause()
    for thread in worker.workers:
        assert thread.paused_event.wait(5), "a worker thread did not pause"


# add_middleware -----------------------------------------------------------------


class Marker(Middleware):
    pass


def test_before_and_after_together_is_both_a_value_and_an_assertion_error(broker):
    with pytest.raises(BeforeAndAfter) as raised:
        broker.add_middleware(Marker(), before=AgeLimit, after=TimeLimit)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, AssertionError)
    assert not any(isinstance(m, Marker) for m in broker.middleware)


def test_a_missing_anchor_is_a_value_error_that_is_no_assertion(broker):
    with pytest.raises(ValueError, match="Marker is not installed") as raised:
        broker.add_middleware(Marker(), after=Marker)
    assert not isinstance(raised.value, AssertionError)


def test_adding_a_second_middleware_of_a_type_warns_and_keeps_both(broker, caplog):
    first, second = Marker(), Marker()
    broker.add_middleware(first)
    with caplog.at_level(logging.WARNING):
        broker.add_middleware(second)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("same type twice" in text and "Marker" in text for text in warnings)
    assert broker.middleware[-2:] == [first, second]


def test_adding_a_middleware_of_a_new_type_does_not_warn(caplog):
    broker = StubBroker(middleware=[Retries()])
    with caplog.at_level(logging.WARNING):
        broker.add_middleware(Marker(), before=Retries)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert isinstance(broker.middleware[0], Marker)


# MessageProxy equality ------------------------------------------------------------


def make_message(**kwargs):
    fields = {"queue_name": "default", "actor_name": "job", "args": (1,), "kwargs": {}, "options": {}}
    fields.update(kwargs)
    return Message(**fields)


def test_a_proxy_equals_its_message_and_a_proxy_of_an_equal_message():
    message = make_message()
    proxy = MessageProxy(message, tag="a")
    assert proxy == message
    assert message == proxy
    assert proxy == MessageProxy(message, tag="b")
    assert hash(proxy) == hash(MessageProxy(message, tag="b"))
    assert [proxy] == [message]


def test_a_proxy_differs_from_other_messages_and_other_types():
    proxy = MessageProxy(make_message())
    assert proxy != make_message()  # a new message id
    assert proxy != "job(1)"
    assert proxy != None  # noqa: E711 - the comparison is the test


# Worker: queue_prefetch and pausing threads --------------------------------------


def test_queue_prefetch_defaults_to_twice_the_threads_and_prefetch_is_its_alias(broker):
    worker = Worker(broker, worker_threads=3)
    assert worker.queue_prefetch == worker.prefetch == 6
    worker.prefetch = 4
    assert worker.queue_prefetch == 4
    assert Worker(broker, worker_threads=3, prefetch=1).queue_prefetch == 1


def test_the_module_queue_prefetch_applies_when_no_prefetch_is_given(broker, monkeypatch):
    monkeypatch.setattr(worker_module, "QUEUE_PREFETCH", 7)
    assert Worker(broker, worker_threads=1).queue_prefetch == 7
    assert Worker(broker, worker_threads=1, prefetch=2).queue_prefetch == 2


def test_paused_threads_leave_fetched_messages_in_the_work_queue_up_to_queue_prefetch(broker, start_worker):
    ran = []

    @actor(broker=broker)
    def job(n):
        ran.append(n)

    worker = start_worker(worker_threads=2, prefetch=10)
    worker.queue_prefetch = 3  # lowered after start: applies to the next fetch
    pause_threads(worker)
    for n in range(8):
        job.send(n)
    wait_for(lambda: worker.work_queue.qsize() == 3)
    time.sleep(0.1)  # the consumers keep polling: nothing more may arrive
    assert worker.work_queue.qsize() == 3
    assert broker.queues["default"].qsize() == 5
    assert ran == []

    worker.resume()
    assert all(not thread.paused_event.is_set() for thread in worker.workers)
    broker.join("default", timeout=5000)
    worker.join(timeout=5000)
    assert sorted(ran) == list(range(8))


def test_one_paused_thread_runs_messages_in_send_order_once_resumed(broker, start_worker):
    ran = []

    @actor(broker=broker)
    def job(n):
        ran.append(n)

    worker = start_worker(worker_threads=1, prefetch=10)
    pause_threads(worker)
    for n in range(5):
        job.send(n)
    wait_for(lambda: worker.work_queue.qsize() == 5)
    worker.resume()
    broker.join("default", timeout=5000)
    worker.join(timeout=5000)
    assert ran == [0, 1, 2, 3, 4]


def test_a_thread_can_be_resumed_on_its_own(broker, start_worker):
    ran = threading.Event()

    @actor(broker=broker)
    def job():
        ran.set()

    worker = start_worker(worker_threads=1)
    pause_threads(worker)
    job.send()
    wait_for(lambda: worker.work_queue.qsize() == 1)
    assert not ran.is_set()
    worker.workers[0].resume()
    assert ran.wait(5)


# How failures are reported ------------------------------------------------------


def test_an_unknown_actor_raises_actor_not_found_with_its_name_and_a_full_reason(broker, start_worker):
    message = make_message(queue_name="elsewhere", actor_name="nobody")
    broker.declare_queue("elsewhere")
    broker.enqueue(message)
    start_worker()
    with pytest.raises(ActorNotFound) as raised:
        broker.join("elsewhere", fail_fast=True, timeout=5000)
    assert str(raised.value) == "nobody"
    [dead] = broker.dead_letters
    assert dead == message
    assert dead.fail_reason == "Actor 'nobody' is not declared on this broker."


def test_rate_limit_exceeded_is_logged_at_debug_without_an_error(broker, start_worker, caplog):
    @actor(broker=broker, max_retries=0)
    def limited():
        raise RateLimitExceeded("too many")

    caplog.set_level(logging.DEBUG, logger="django_actors.worker")
    start_worker()
    message = limited.send()
    with pytest.raises(RateLimitExceeded, match="too many"):
        broker.join("default", fail_fast=True, timeout=5000)
    records = [r for r in caplog.records if r.name == "django_actors.worker"]
    assert not [r for r in records if r.levelno >= logging.ERROR]
    assert any(
        r.levelno == logging.DEBUG
        and r.getMessage() == f"Rate limit exceeded in message {message.message_id}: too many."
        for r in records
    )


def test_other_exceptions_are_still_logged_as_errors(broker, start_worker, caplog):
    @actor(broker=broker, max_retries=0)
    def broken():
        raise KeyError("gone")

    start_worker()
    broken.send()
    with pytest.raises(KeyError):
        broker.join("default", fail_fast=True, timeout=5000)
    assert any(r.levelno == logging.ERROR and r.name == "django_actors.worker" for r in caplog.records)


# StubBroker: fail_fast_default and the queue.Queue-like surface -------------------


def test_fail_fast_default_true_makes_a_plain_join_raise():
    broker = StubBroker(fail_fast_default=True)

    @actor(broker=broker, max_retries=0)
    def broken():
        raise ZeroDivisionError

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broken.send()
        with pytest.raises(ZeroDivisionError):
            broker.join("default", timeout=5000)
        broken.send()
        broker.join("default", fail_fast=False, timeout=5000)  # told otherwise: waits
        assert len(broker.dead_letters) == 2
    finally:
        worker.stop(timeout=5000)
        broker.close()


def test_by_default_a_plain_join_raises_as_dramatiqs_does(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def broken():
        raise ZeroDivisionError

    start_worker()
    broken.send()
    assert broker.fail_fast_default is True
    with pytest.raises(ZeroDivisionError):
        broker.join("default", timeout=5000)
    assert len(broker.dead_letters) == 1


def test_a_stub_queue_counts_waiting_and_unfinished_messages(broker, start_worker):
    started, release = threading.Event(), threading.Event()

    @actor(broker=broker)
    def slow():
        started.set()
        release.wait(5)

    queue = broker.queues["default"]
    slow.send()
    slow.send_with_options(delay=60_000)
    assert queue.qsize() == 2
    assert queue.unfinished_tasks == 2
    start_worker(worker_threads=1, prefetch=1)
    assert started.wait(5)
    assert queue.qsize() == 1  # the delayed one
    assert queue.unfinished_tasks == 2  # and the one running
    release.set()
    broker.flush("default")
    wait_for(lambda: queue.unfinished_tasks == 0)


def test_put_on_a_stub_queue_delivers_raw_bytes_and_wakes_the_consumer(broker, start_worker):
    ran = threading.Event()

    @actor(broker=broker)
    def job():
        ran.set()

    start_worker(worker_timeout=1000)
    time.sleep(0.05)  # let the consumer block in its 1 s fetch: only a wake-up beats it
    broker.queues["default"].put(job.message().encode())
    assert ran.wait(0.5)


# RabbitmqBroker and Redis ------------------------------------------------------------


def test_rabbitmq_broker_imports_and_says_what_to_use_instead():
    from django_actors.brokers.rabbitmq import RabbitmqBroker

    with pytest.raises(NotImplementedError, match=r"no RabbitMQ broker.*RedisBroker"):
        RabbitmqBroker(middleware=[])


def test_maintenance_scale_is_importable():
    from django_actors.brokers.redis import MAINTENANCE_SCALE

    assert MAINTENANCE_SCALE == 1_000_000


@pytest.mark.redis
def test_a_redis_consumer_ignores_a_message_it_never_fetched(redis_url, caplog):
    broker = make_broker(redis_url, results=False)
    try:

        @actor(broker=broker)
        def job():
            pass

        job.send()
        consumer = broker.consume("default", prefetch=1, timeout=500)
        [held] = consumer.fetch(1)
        stranger = make_message(options={"redis_message_id": "XXXXXXXXX"})
        with caplog.at_level(logging.WARNING):
            consumer.nack(stranger)
            consumer.ack(stranger)
        assert sum("not fetched by this consumer" in r.getMessage() for r in caplog.records) == 2
        assert broker.stats("default").in_flight == 1  # the held message is untouched
        consumer.ack(held)
        broker.join("default", timeout=5000)
        assert broker.dead_letters("default") == []
        consumer.close()
    finally:
        broker.close()

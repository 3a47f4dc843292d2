"""Tests for the StubBroker: join, flush, dead letters, delays and bad payloads."""

from __future__ import annotations

import threading
import time

import pytest

from django_actors import Message, QueueJoinTimeout, QueueNotFound, Worker, actor
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.message import current_millis
from django_actors.results import ResultFailure, Results
from django_actors.results.backends.stub import StubBackend

from .redis_helpers import wait_for


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[*default_middleware(), Results(backend=StubBackend())])
    yield broker
    broker.close()


@pytest.fixture
def start_worker(broker):
    workers = []

    def start(**kwargs):
        kwargs.setdefault("worker_timeout", 50)
        kwargs.setdefault("worker_threads", 2)
        worker = Worker(broker, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5000)


def pending(broker, queue_name="default"):
    return len(broker.queues[queue_name])


def test_messages_are_stored_encoded(broker):
    @actor(broker=broker)
    def stored(a):
        pass

    message = stored.send(1)
    [data] = broker.queues["default"].ready
    assert isinstance(data, bytes)
    assert Message.decode(data) == message


def test_join_returns_once_the_queue_is_processed(broker, start_worker):
    done = []

    @actor(broker=broker)
    def work(i):
        done.append(i)

    for i in range(20):
        work.send(i)
    start_worker()
    broker.join("default", timeout=5000)
    assert sorted(done) == list(range(20))
    assert broker.queues["default"].empty


def test_join_on_an_empty_queue_returns_at_once(broker):
    broker.declare_queue("default")
    start = time.monotonic()
    broker.join("default", timeout=5000)
    assert time.monotonic() - start < 1


def test_join_timeout_raises_queue_join_timeout(broker):
    @actor(broker=broker)
    def never_run():
        pass

    never_run.send()
    start = time.monotonic()
    with pytest.raises(QueueJoinTimeout, match="'default'"):
        broker.join("default", timeout=100)
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 2
    assert pending(broker) == 1


def test_join_waits_for_the_message_in_flight(broker, start_worker):
    release = threading.Event()
    started = threading.Event()

    @actor(broker=broker)
    def slow():
        started.set()
        release.wait(5)

    slow.send()
    start_worker()
    assert started.wait(5)
    assert pending(broker) == 0  # fetched, not yet acked
    with pytest.raises(QueueJoinTimeout):
        broker.join("default", timeout=50)
    release.set()
    broker.join("default", timeout=5000)


def test_join_unknown_queue_raises_queue_not_found(broker):
    with pytest.raises(QueueNotFound, match="'nope'"):
        broker.join("nope")


def test_join_fail_fast_raises_the_actors_exception(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def fails():
        raise ValueError("bad thing")

    release = threading.Event()

    @actor(broker=broker)
    def blocks():
        release.wait(5)

    blocks.send()
    fails.send()
    start_worker(worker_threads=2)
    with pytest.raises(ValueError, match="bad thing"):
        broker.join("default", timeout=5000, fail_fast=True)
    release.set()


def test_join_fail_fast_raises_for_a_failure_that_happened_before_the_join(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def fails_early():
        raise KeyError("early")

    fails_early.send()
    start_worker()
    wait_for(lambda: broker.dead_letters)
    with pytest.raises(KeyError, match="early"):
        broker.join("default", timeout=5000, fail_fast=True)
    # Reported once: the next join has nothing new to report.
    broker.join("default", timeout=5000, fail_fast=True)


def test_join_fail_fast_ignores_failures_in_other_queues(broker, start_worker):
    @actor(broker=broker, queue_name="other", max_retries=0)
    def fails_elsewhere():
        raise ValueError("elsewhere")

    @actor(broker=broker)
    def fine():
        pass

    fails_elsewhere.send()
    start_worker()
    broker.join("other", timeout=5000, fail_fast=False)
    fine.send()
    broker.join("default", timeout=5000, fail_fast=True)
    with pytest.raises(ValueError, match="elsewhere"):
        broker.join("other", timeout=5000, fail_fast=True)


def test_join_fail_fast_false_ignores_failures(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def fails():
        raise ValueError("ignored")

    fails.send()
    start_worker()
    broker.join("default", timeout=5000, fail_fast=False)
    assert len(broker.dead_letters) == 1


def test_a_plain_join_raises_by_default_and_waits_with_fail_fast_default_false(broker, start_worker):
    # By default (dramatiq 2's), a plain join raises what the failed message raised.
    @actor(broker=broker, max_retries=0)
    def fails():
        raise ValueError("by default")

    assert broker.fail_fast_default is True
    fails.send()
    start_worker()
    with pytest.raises(ValueError, match="by default"):
        broker.join("default", timeout=5000)

    # Built with fail_fast_default=False, a plain join waits past the failure
    # for the message behind it, and leaves the failure unreported.
    patient = StubBroker(middleware=default_middleware(), fail_fast_default=False)
    done = []

    @actor(broker=patient, max_retries=0)
    def fails_too():
        raise KeyError("waited past")

    @actor(broker=patient)
    def behind(i):
        done.append(i)

    fails_too.send()
    behind.send(1)
    worker = Worker(patient, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        patient.join("default", timeout=5000)
        assert done == [1]
        assert [p.actor_name for p in patient.dead_letters] == ["fails_too"]
        with pytest.raises(KeyError, match="waited past"):
            patient.join("default", timeout=5000, fail_fast=True)
    finally:
        worker.stop(timeout=5000)
        patient.close()


def test_join_waits_for_delayed_messages(broker, start_worker):
    ran_at = []

    @actor(broker=broker)
    def later():
        ran_at.append(current_millis())

    message = later.send_with_options(delay=150)
    start_worker()
    broker.join("default", timeout=5000)
    assert len(ran_at) == 1
    assert ran_at[0] >= message.options["eta"]


def test_delayed_messages_are_not_run_before_their_eta(broker, start_worker):
    ran = []

    @actor(broker=broker)
    def when(label):
        ran.append((label, current_millis()))

    late = when.send_with_options(args=("late",), delay=300)
    early = when.send_with_options(args=("early",), delay=100)
    now = when.send("now")
    start_worker(worker_threads=1)
    broker.join("default", timeout=5000)
    assert [label for label, _ in ran] == ["now", "early", "late"]
    times = dict(ran)
    assert times["early"] >= early.options["eta"]
    assert times["late"] >= late.options["eta"]
    assert "eta" not in now.options


def test_flush_drops_ready_and_delayed_messages_of_one_queue(broker):
    @actor(broker=broker)
    def a():
        pass

    @actor(broker=broker, queue_name="keep")
    def b():
        pass

    a.send()
    a.send_with_options(delay=60_000)
    b.send()
    broker.flush("default")
    assert pending(broker) == 0
    assert pending(broker, "keep") == 1
    broker.join("default", timeout=100)


def test_flush_unknown_queue_raises(broker):
    with pytest.raises(QueueNotFound):
        broker.flush("nope")


def test_flush_all_drops_messages_and_dead_letters(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def fails():
        raise ValueError

    @actor(broker=broker, queue_name="q2")
    def other():
        pass

    fails.send()
    worker = start_worker()
    broker.join("default", timeout=5000, fail_fast=False)
    worker.stop()
    other.send()
    other.send_with_options(delay=60_000)
    assert broker.dead_letters
    broker.flush_all()
    assert broker.dead_letters == []
    assert pending(broker) == 0 and pending(broker, "q2") == 0


def test_dead_letters_by_queue(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def fails_a(i):
        raise ValueError(f"a{i}")

    @actor(broker=broker, queue_name="b", max_retries=0)
    def fails_b():
        raise KeyError("b")

    fails_a.send(1)
    fails_a.send(2)
    fails_b.send()
    start_worker()
    broker.join("default", timeout=5000, fail_fast=False)
    broker.join("b", timeout=5000, fail_fast=False)
    assert sorted(p.args[0] for p in broker.dead_letters_by_queue["default"]) == [1, 2]
    assert [p.actor_name for p in broker.dead_letters_by_queue["b"]] == ["fails_b"]
    assert len(broker.dead_letters) == 3
    assert all(p.failed for p in broker.dead_letters)
    assert "ValueError: a" in broker.dead_letters_by_queue["default"][0].fail_reason


def test_requeue_dead_letters_puts_them_back(broker, start_worker):
    attempts = []
    healed = threading.Event()

    @actor(broker=broker, max_retries=0)
    def flaky(i):
        attempts.append(i)
        if not healed.is_set():
            raise ValueError("not yet")

    for i in range(3):
        flaky.send(i)
    start_worker()
    broker.join("default", timeout=5000, fail_fast=False)
    assert len(broker.dead_letters) == 3
    healed.set()
    assert broker.requeue_dead_letters() == 3
    assert broker.dead_letters == []
    broker.join("default", timeout=5000)
    assert sorted(attempts) == [0, 0, 1, 1, 2, 2]
    assert broker.dead_letters == []


def test_requeue_dead_letters_by_id_keeps_the_others(broker):
    @actor(broker=broker, max_retries=0)
    def fails(i):
        raise ValueError

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    messages = [fails.send(i) for i in range(3)]
    worker.start()
    try:
        broker.join("default", timeout=5000, fail_fast=False)
    finally:
        worker.stop()
    assert broker.requeue_dead_letters([messages[1].message_id, "no-such-id"]) == 1
    assert [Message.decode(d).message_id for d in broker.queues["default"].ready] == [messages[1].message_id]
    assert sorted(p.message_id for p in broker.dead_letters) == sorted([messages[0].message_id, messages[2].message_id])


def test_purge_dead_letters(broker, start_worker):
    @actor(broker=broker, max_retries=0)
    def fails(i):
        raise ValueError

    messages = [fails.send(i) for i in range(3)]
    start_worker()
    broker.join("default", timeout=5000, fail_fast=False)
    assert broker.purge_dead_letters([messages[0].message_id]) == 1
    assert len(broker.dead_letters) == 2
    assert broker.purge_dead_letters() == 2
    assert broker.dead_letters == []
    assert pending(broker) == 0


def test_garbage_is_dead_lettered_with_a_reason_and_the_worker_goes_on(broker, start_worker):
    done = []

    @actor(broker=broker)
    def good(i):
        done.append(i)

    broker.put_raw("default", b"\x00 definitely not a message")
    broker.put_raw("default", b'{"queue_name": "default"}')
    good.send(1)
    start_worker(worker_threads=1)
    broker.join("default", timeout=5000, fail_fast=False)
    assert done == [1]
    reasons = [p.fail_reason for p in broker.dead_letters]
    assert len(reasons) == 2
    assert all(reason.startswith("undecodable message:") for reason in reasons)
    assert "not valid JSON" in reasons[0]
    assert "missing field(s)" in reasons[1]
    assert broker.dead_letters[0].tag == b"\x00 definitely not a message"


def test_undecodable_dead_letters_are_requeued_as_they_were(broker, start_worker):
    broker.declare_queue("default")
    broker.put_raw("default", b"garbage")
    worker = start_worker()
    broker.join("default", timeout=5000, fail_fast=False)
    worker.stop()
    assert broker.requeue_dead_letters() == 1
    assert list(broker.queues["default"].ready) == [b"garbage"]


def test_consumer_fetch_waits_up_to_its_timeout(broker):
    broker.declare_queue("default")
    consumer = broker.consume("default", timeout=100)
    start = time.monotonic()
    assert consumer.fetch(5) == []
    assert 0.09 <= time.monotonic() - start < 2


def test_consumer_fetch_wakes_when_a_message_arrives(broker):
    @actor(broker=broker)
    def arrives():
        pass

    consumer = broker.consume("default", timeout=5000)
    sender = threading.Timer(0.05, arrives.send)
    sender.start()
    start = time.monotonic()
    [proxy] = consumer.fetch(5)
    assert proxy.actor_name == "arrives"
    assert time.monotonic() - start < 4
    sender.join()


def test_consumer_requeue_hands_messages_back_in_order(broker):
    @actor(broker=broker)
    def numbered(i):
        pass

    for i in range(4):
        numbered.send(i)
    consumer = broker.consume("default", timeout=100)
    proxies = consumer.fetch(3)
    assert [p.args[0] for p in proxies] == [0, 1, 2]
    assert broker.queues["default"].unacked == 3
    consumer.requeue(proxies)
    assert broker.queues["default"].unacked == 0
    assert [Message.decode(d).args[0] for d in broker.queues["default"].ready] == [0, 1, 2, 3]


def test_consumer_ack_and_nack(broker):
    @actor(broker=broker)
    def numbered(i):
        pass

    numbered.send(1)
    numbered.send(2)
    consumer = broker.consume("default", timeout=100)
    first, second = consumer.fetch(2)
    consumer.ack(first)
    second.fail("no")
    consumer.nack(second)
    assert broker.queues["default"].empty
    assert broker.dead_letters == [second]


def test_consume_unknown_queue_raises(broker):
    with pytest.raises(QueueNotFound):
        broker.consume("nope")


def test_waiting_caller_of_garbage_gets_no_hang_for_other_messages(broker, start_worker):
    @actor(broker=broker, store_results=True, max_retries=0)
    def fails():
        raise ValueError("stored failure")

    broker.put_raw("default", b"garbage")
    message = fails.send()
    start_worker()
    with pytest.raises(ResultFailure, match="stored failure"):
        message.get_result(backend=broker.get_results_backend(), block=True, timeout=5000)

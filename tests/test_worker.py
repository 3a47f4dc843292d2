"""Tests for the Worker: lifecycle, stop with messages in flight, pause, priorities, queues."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from django_actors import Message, Middleware, QueueJoinTimeout, Worker, actor
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import SkipMessage
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

    def start(on=None, **kwargs):
        kwargs.setdefault("worker_timeout", 50)
        kwargs.setdefault("worker_threads", 2)
        worker = Worker(on or broker, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5000)


def queued(broker, queue_name="default"):
    return [Message.decode(data) for data in broker.queues[queue_name].ready]


class HookRecorder(Middleware):
    def __init__(self):
        self.calls = []
        self._lock = threading.Lock()

    def _record(self, *event):
        with self._lock:
            self.calls.append(event)

    def before_worker_boot(self, broker, worker):
        self._record("before_worker_boot")

    def after_worker_boot(self, broker, worker):
        self._record("after_worker_boot")

    def after_worker_thread_boot(self, broker, thread):
        self._record("after_worker_thread_boot")

    def before_worker_thread_shutdown(self, broker, thread):
        self._record("before_worker_thread_shutdown")

    def before_consumer_thread_shutdown(self, broker, thread):
        self._record("before_consumer_thread_shutdown", thread.queue_name)

    def before_worker_shutdown(self, broker, worker):
        self._record("before_worker_shutdown")

    def after_worker_shutdown(self, broker, worker):
        self._record("after_worker_shutdown")

    def before_process_message(self, broker, message):
        self._record("before_process_message", message.actor_name)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._record("after_process_message", message.actor_name, result, type(exception).__name__)

    def after_skip_message(self, broker, message):
        self._record("after_skip_message", message.actor_name)

    def after_ack(self, broker, message):
        self._record("after_ack", message.actor_name)

    def after_nack(self, broker, message):
        self._record("after_nack", message.actor_name)


class Skipper(Middleware):
    def before_process_message(self, broker, message):
        if message.kwargs.get("skip"):
            raise SkipMessage("skipped on purpose")


# Lifecycle -------------------------------------------------------------------------


def test_worker_processes_messages_and_join_waits(broker, start_worker):
    done = []

    @actor(broker=broker)
    def work(i):
        done.append(i)

    worker = start_worker(worker_threads=4)
    for i in range(50):
        work.send(i)
    worker.join(timeout=5000)
    assert sorted(done) == list(range(50))


def test_worker_threads_must_be_positive(broker):
    with pytest.raises(ValueError, match="worker_threads"):
        Worker(broker, worker_threads=0)


def test_prefetch_defaults_to_twice_the_threads(broker):
    assert Worker(broker, worker_threads=3).prefetch == 6
    assert Worker(broker, worker_threads=3, prefetch=1).prefetch == 1


def test_worker_join_times_out(broker, start_worker):
    release = threading.Event()

    @actor(broker=broker)
    def stuck():
        release.wait(5)

    stuck.send()
    worker = start_worker()
    with pytest.raises(QueueJoinTimeout):
        worker.join(timeout=100)
    release.set()
    worker.join(timeout=5000)


def test_worker_runs_messages_in_parallel(broker, start_worker):
    barrier = threading.Barrier(3, timeout=5)
    passed = []

    @actor(broker=broker)
    def meet():
        barrier.wait()
        passed.append(1)

    for _ in range(3):
        meet.send()
    worker = start_worker(worker_threads=3)
    worker.join(timeout=5000)
    assert len(passed) == 3


def test_worker_runs_async_actors(broker, start_worker):
    @actor(broker=broker, store_results=True)
    async def async_double(value):
        await asyncio.sleep(0.001)
        return value * 2

    start_worker()
    messages = [async_double.send(i) for i in range(5)]
    backend = broker.get_results_backend()
    assert [m.get_result(backend=backend, block=True, timeout=5000) for m in messages] == [0, 2, 4, 6, 8]


def test_worker_hooks_run_at_boot_and_shutdown(broker, start_worker):
    recorder = HookRecorder()
    broker.add_middleware(recorder)
    broker.declare_queue("default")
    worker = start_worker(worker_threads=2)
    wait_for(lambda: recorder.calls.count(("after_worker_thread_boot",)) == 2)
    worker.stop(timeout=5000)
    calls = recorder.calls
    assert calls[0] == ("before_worker_boot",)
    assert ("after_worker_boot",) in calls
    assert calls.count(("before_worker_thread_shutdown",)) == 2
    assert ("before_consumer_thread_shutdown", "default") in calls
    assert calls.index(("before_worker_shutdown",)) < calls.index(("before_worker_thread_shutdown",))
    assert calls[-1] == ("after_worker_shutdown",)


def test_process_hooks_see_results_exceptions_and_settlement(broker, start_worker):
    recorder = HookRecorder()
    broker.add_middleware(recorder)

    @actor(broker=broker)
    def ok():
        return "fine"

    @actor(broker=broker, max_retries=0)
    def bad():
        raise ValueError("bad")

    ok.send()
    worker = start_worker(worker_threads=1)
    worker.join(timeout=5000)
    bad.send()
    worker.join(timeout=5000)
    calls = [c for c in recorder.calls if c[0].endswith(("process_message", "ack"))]
    assert calls == [
        ("before_process_message", "ok"),
        ("after_process_message", "ok", "fine", "NoneType"),
        ("after_ack", "ok"),
        ("before_process_message", "bad"),
        ("after_process_message", "bad", None, "ValueError"),
        ("after_nack", "bad"),
    ]


def test_skip_message_acks_without_running_the_actor(broker, start_worker):
    recorder = HookRecorder()
    broker.add_middleware(Skipper())
    broker.add_middleware(recorder)
    ran = []

    @actor(broker=broker)
    def maybe(skip=False):
        ran.append(skip)

    maybe.send(skip=True)
    maybe.send(skip=False)
    worker = start_worker(worker_threads=1)
    worker.join(timeout=5000)
    assert ran == [False]
    assert ("after_skip_message", "maybe") in recorder.calls
    assert recorder.calls.count(("after_ack", "maybe")) == 2
    assert broker.dead_letters == []


def test_a_failing_actor_is_dead_lettered_and_the_worker_goes_on(broker, start_worker):
    done = []

    @actor(broker=broker, max_retries=0)
    def sometimes(i):
        if i % 2:
            raise RuntimeError(f"odd {i}")
        done.append(i)

    for i in range(6):
        sometimes.send(i)
    worker = start_worker()
    worker.join(timeout=5000)
    assert sorted(done) == [0, 2, 4]
    assert sorted(p.args[0] for p in broker.dead_letters) == [1, 3, 5]


# Stopping ---------------------------------------------------------------------------------


def test_stop_finishes_the_message_in_flight_and_hands_back_the_prefetched(broker, start_worker):
    started = threading.Event()
    release = threading.Event()
    runs: list[int] = []
    runs_lock = threading.Lock()

    @actor(broker=broker)
    def job(i):
        if i == 0:
            started.set()
            release.wait(5)
        with runs_lock:
            runs.append(i)

    for i in range(4):
        job.send(i)
    worker = start_worker(worker_threads=1, prefetch=10)
    assert started.wait(5)
    consumer = worker.consumers["default"]
    wait_for(lambda: consumer.in_flight == 4)  # one running, three prefetched
    assert broker.queues["default"].unacked == 4

    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 5000})
    stopper.start()
    wait_for(worker._stopping.is_set)
    release.set()
    stopper.join(5)
    assert not stopper.is_alive()

    assert runs == [0]  # the message in flight finished; nothing else started
    queue = broker.queues["default"]
    assert queue.unacked == 0
    assert [m.args[0] for m in queued(broker)] == [1, 2, 3]  # handed back, in order

    second = start_worker(worker_threads=2)
    second.join(timeout=5000)
    assert sorted(runs) == [0, 1, 2, 3]  # nothing lost, nothing run twice
    assert broker.dead_letters == []


def test_stop_returns_when_its_timeout_runs_out(broker, start_worker, caplog):
    started = threading.Event()
    release = threading.Event()

    @actor(broker=broker)
    def stuck(i):
        if i == 0:
            started.set()
            release.wait(10)

    for i in range(3):
        stuck.send(i)
    worker = start_worker(worker_threads=1, prefetch=5)
    assert started.wait(5)
    wait_for(lambda: worker.consumers["default"].in_flight == 3)
    begin = time.monotonic()
    worker.stop(timeout=200)
    assert time.monotonic() - begin < 2
    assert "did not finish" in caplog.text
    assert [m.args[0] for m in queued(broker)] == [1, 2]
    release.set()
    wait_for(lambda: broker.queues["default"].unacked == 0)
    assert broker.dead_letters == []


def test_stop_without_start_and_twice_is_harmless(broker, start_worker):
    Worker(broker).stop()
    worker = start_worker()
    worker.stop()
    worker.stop()


def test_a_fetch_that_completes_after_stop_is_handed_back(broker):
    broker.declare_queue("default")

    @actor(broker=broker)
    def late():
        pass

    worker = Worker(broker, worker_timeout=400, worker_threads=1)
    worker.start()
    consumer = worker.consumers["default"]
    wait_for(lambda: consumer.consumer is not None)
    worker.stop(timeout=0)  # the consumer thread may still be waiting in fetch
    late.send()
    consumer.join(5)
    assert not consumer.is_alive()
    queue = broker.queues["default"]
    assert queue.unacked == 0
    assert len(queue.ready) == 1


# Pause and resume ----------------------------------------------------------------------------


def test_pause_waits_for_running_messages_and_nothing_runs_until_resume(broker, start_worker):
    started = threading.Event()
    release = threading.Event()
    runs: list[int] = []

    @actor(broker=broker)
    def job(i):
        if i == 0:
            started.set()
            release.wait(5)
        runs.append(i)

    job.send(0)
    worker = start_worker(worker_threads=2)
    assert started.wait(5)

    pauser = threading.Thread(target=worker.pause)
    pauser.start()
    wait_for(lambda: worker.paused)
    for i in range(1, 5):
        job.send(i)
    release.set()
    pauser.join(5)
    assert not pauser.is_alive()  # pause() returned once the running message was done
    assert runs == [0]
    # Paused: messages wait. Give the consumer and worker threads several of
    # their wake-ups to prove nothing starts.
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert runs == [0]
        time.sleep(0.01)
    worker.resume()
    worker.join(timeout=5000)
    assert sorted(runs) == [0, 1, 2, 3, 4]


def test_pause_from_inside_an_actor_does_not_deadlock(broker, start_worker):
    worker_ref = []
    done = threading.Event()

    @actor(broker=broker)
    def pauses():
        worker_ref[0].pause()
        done.set()

    worker = start_worker(worker_threads=1)
    worker_ref.append(worker)
    pauses.send()
    assert done.wait(5)
    assert worker.paused
    worker.resume()
    worker.join(timeout=5000)


def test_messages_run_by_priority_inside_a_worker(broker, start_worker):
    started = threading.Event()
    release = threading.Event()
    order: list[str] = []

    @actor(broker=broker)
    def blocker():
        started.set()
        release.wait(5)

    def make(name, priority):
        @actor(broker=broker, actor_name=name, priority=priority)
        def record():
            order.append(name)

        return record

    low = make("low", 10)
    high = make("high", -5)
    mid = make("mid", 0)

    blocker.send()
    worker = start_worker(worker_threads=1, prefetch=20)
    assert started.wait(5)
    for sender in (low, mid, high, low, high, mid):
        sender.send()
    wait_for(lambda: worker.consumers["default"].in_flight == 7)
    release.set()
    worker.join(timeout=5000)
    assert order == ["high", "high", "mid", "mid", "low", "low"]


# Queues ---------------------------------------------------------------------------------------


def test_queues_filter_limits_what_is_consumed(broker, start_worker):
    done = []

    @actor(broker=broker, queue_name="wanted")
    def wanted():
        done.append("wanted")

    @actor(broker=broker, queue_name="ignored")
    def ignored():
        done.append("ignored")

    wanted.send()
    ignored.send()
    worker = start_worker(queues=["wanted"])
    broker.join("wanted", timeout=5000)
    assert set(worker.consumers) == {"wanted"}
    assert done == ["wanted"]
    assert len(broker.queues["ignored"].ready) == 1


def test_queues_declared_after_start_are_consumed(broker, start_worker):
    broker.declare_queue("default")
    worker = start_worker()
    done = threading.Event()

    @actor(broker=broker, queue_name="late-queue")
    def late():
        done.set()

    late.send()
    assert done.wait(5)
    assert "late-queue" in worker.consumers


def test_unknown_actor_is_dead_lettered_and_a_waiting_caller_gets_result_failure(broker, start_worker):
    done = []

    @actor(broker=broker)
    def known():
        done.append(1)

    orphan = Message(queue_name="default", actor_name="nobody_home", args=(), kwargs={}, options={})
    broker.enqueue(orphan)
    known.send()
    start_worker(worker_threads=1)
    begin = time.monotonic()
    with pytest.raises(ResultFailure) as info:
        orphan.get_result(backend=broker.get_results_backend(), block=True, timeout=5000)
    assert time.monotonic() - begin < 4
    assert info.value.orig_exc_type == "ActorNotFound"
    assert "nobody_home" in info.value.orig_exc_msg
    broker.join("default", timeout=5000, fail_fast=False)
    assert done == [1]
    [letter] = broker.dead_letters
    assert letter.message_id == orphan.message_id
    assert "nobody_home" in letter.fail_reason

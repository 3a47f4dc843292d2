"""dramatiq-compatible results, composition and common helpers.

Covers what a project moving over from dramatiq relies on here: the
``django_actors.common`` queue-name helpers, the ``GroupCallbacks``
middleware (group completion callbacks without a results backend), the
``pipe_target`` form of ``pipeline.messages``, per-message ``delay`` options
in pipelines, the text of ``ResultFailure``, readable result keys, bare
values stored with ``_store``, results of skipped messages and the warnings
about discarded return values.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from django_actors import Message, Worker, actor, group, pipeline
from django_actors.broker import NoResultsBackend
from django_actors.brokers.stub import StubBroker
from django_actors.common import compute_backoff, dq_name, q_name, xq_name
from django_actors.middleware import AgeLimit, GroupCallbacks, Middleware, Pipelines, Retries, SkipMessage
from django_actors.rate_limits.backends import StubBackend as StubRateLimiterBackend
from django_actors.results import ResultFailure, Results
from django_actors.results.backends.redis import RedisBackend
from django_actors.results.backends.stub import StubBackend

from .redis_helpers import wait_for


@pytest.fixture
def workers():
    started = []

    def start(broker, threads=4):
        worker = Worker(broker, worker_timeout=50, worker_threads=threads)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=5000)


def plain_broker(*extra):
    """A broker without a results backend (dramatiq's default set-up)."""
    return StubBroker(middleware=[Pipelines(), Retries(max_retries=0), *extra])


# django_actors.common -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["emails", "emails.DQ", "emails.XQ"])
def test_queue_name_helpers_map_any_form_to_the_one_asked_for(name):
    assert q_name(name) == "emails"
    assert dq_name(name) == "emails.DQ"
    assert xq_name(name) == "emails.XQ"


def test_queue_name_helpers_leave_other_dots_alone():
    assert q_name("a.b") == "a.b"
    assert dq_name("a.DQ.x") == "a.DQ.x.DQ"


def test_compute_backoff_grows_and_is_capped():
    assert compute_backoff(0, factor=100, jitter=False) == (1, 100)
    assert compute_backoff(3, factor=100, jitter=False, max_backoff=10_000) == (4, 800)
    assert compute_backoff(40, factor=100, jitter=False, max_backoff=10_000) == (41, 10_000)
    for _ in range(50):
        attempts, delay = compute_backoff(3, factor=100, max_backoff=10_000)
        assert attempts == 4 and 400 <= delay <= 800


# GroupCallbacks (no results backend) --------------------------------------------------


def test_group_completion_callback_fires_once_after_every_member(workers):
    broker = plain_broker(GroupCallbacks(StubRateLimiterBackend()))
    finished, callbacks = [], []
    done = threading.Event()

    @actor(broker=broker)
    def member(i):
        time.sleep(0.01 * i)
        finished.append(time.monotonic())

    @actor(broker=broker)
    def finalize(tag):
        callbacks.append((tag, time.monotonic()))
        done.set()

    g = group([member.message(i) for i in range(6)], broker=broker)
    g.add_completion_callback(finalize.message("all done"))
    g.run()
    workers(broker)
    assert done.wait(10)
    broker.join("default", timeout=10_000)
    assert len(finished) == 6
    assert [tag for tag, _ in callbacks] == ["all done"]
    assert max(finished) <= callbacks[0][1]


def test_group_of_pipelines_fires_its_callback_after_the_last_steps(workers):
    broker = plain_broker(GroupCallbacks(StubRateLimiterBackend()))
    steps, callbacks = [], []
    done = threading.Event()

    @actor(broker=broker)
    def step(x):
        steps.append(x)
        return x + 1

    @actor(broker=broker)
    def finalize():
        callbacks.append(sorted(steps))
        done.set()

    g = group([step.message(1) | step.message() | step.message(), step.message(10)], broker=broker)
    g.add_completion_callback(finalize.message())
    g.run()
    workers(broker)
    assert done.wait(10)
    broker.join("default", timeout=10_000)
    assert callbacks == [[1, 2, 3, 10]]


def test_group_callbacks_without_any_middleware_for_them_raise_before_sending():
    broker = plain_broker()

    @actor(broker=broker)
    def member():
        pass

    g = group([member.message() for _ in range(3)], broker=broker)
    g.add_completion_callback(member.message())
    with pytest.raises(NoResultsBackend, match="GroupCallbacks") as info:
        g.run()
    assert isinstance(info.value, RuntimeError)
    assert broker.queues["default"].empty  # nothing was sent


def test_callbacks_needing_results_still_need_a_results_backend():
    broker = plain_broker(GroupCallbacks(StubRateLimiterBackend()))

    @actor(broker=broker)
    def member():
        pass

    g = group([member.message()], broker=broker)
    g.add_completion_callback(member.message(), with_results=True)
    with pytest.raises(NoResultsBackend, match="with_results"):
        g.run()
    failing = group([member.message()], broker=broker)
    failing.add_failure_callback(member.message())
    with pytest.raises(NoResultsBackend, match="failure callbacks"):
        failing.run()


def test_a_member_delivered_twice_counts_once_and_fires_once():
    middleware = GroupCallbacks(StubRateLimiterBackend())
    assert middleware.completed("g1", 2, "m1") is False
    assert middleware.completed("g1", 2, "m1") is False  # duplicate of m1: still one of two
    assert middleware.completed("g1", 2, "m2") is True  # the last member fires
    assert middleware.completed("g1", 2, "m1") is False  # a late duplicate does not fire again
    # The redelivery of the firing message (its first delivery died before
    # the callbacks were sent) fires again: at least once, never zero times.
    assert middleware.completed("g1", 2, "m2") is True


def test_group_callbacks_count_on_a_redis_rate_limiter_backend(redis_url, workers):
    from django_actors.rate_limits.backends.redis import RedisBackend as RedisRateLimiterBackend

    backend = RedisRateLimiterBackend(url=redis_url)
    broker = plain_broker(GroupCallbacks(backend))
    done = threading.Event()
    calls = []

    @actor(broker=broker)
    def member():
        pass

    @actor(broker=broker)
    def finalize():
        calls.append(1)
        done.set()

    g = group([member.message() for _ in range(5)], broker=broker)
    g.add_completion_callback(finalize.message())
    g.run()
    workers(broker)
    assert done.wait(10)
    broker.join("default", timeout=10_000)
    assert calls == [1]
    backend.close()


def test_group_callbacks_rejects_a_wrong_backend_and_ttl():
    with pytest.raises(TypeError, match="rate-limiter backend"):
        GroupCallbacks(StubBackend())
    with pytest.raises(ValueError, match="barrier_ttl"):
        GroupCallbacks(StubRateLimiterBackend(), barrier_ttl=0)


# Pipelines in dramatiq's form ---------------------------------------------------------


def test_pipeline_messages_carry_the_next_step_in_pipe_target():
    broker = plain_broker()

    @actor(broker=broker)
    def add(x, y):
        return x + y

    a, b, c = add.message(1, 2), add.message(3), add.message(4)
    messages = (a | b | c).messages
    assert [m.message_id for m in messages] == [a.message_id, b.message_id, c.message_id]
    assert messages[0].options["pipe_target"] == messages[1].asdict()
    assert messages[1].options["pipe_target"] == messages[2].asdict()
    assert "pipe_target" not in messages[2].options
    assert "pipe_target" not in a.options, "the steps themselves are not changed"


def test_a_step_failed_by_a_middleware_does_not_start_the_next_one(workers):
    class FailAfterwards(Middleware):
        def after_process_message(self, broker, message, *, result=None, exception=None):
            message.fail("failed by a middleware")

    broker = plain_broker(FailAfterwards())
    ran = []

    @actor(broker=broker)
    def first():
        ran.append("first")

    @actor(broker=broker)
    def second(_=None):
        ran.append("second")

    pipeline([first.message(), second.message()], broker=broker).run()
    workers(broker)
    wait_for(lambda: len(broker.dead_letters) == 1)
    broker.join("default", timeout=10_000, fail_fast=False)
    assert ran == ["first"]
    assert broker.dead_letters[0].actor_name == "first"


def delayed(message, ms):
    return message.copy(options={**message.options, "delay": ms})


@pytest.mark.parametrize("with_results", [False, True])
def test_pipeline_steps_honour_their_delay_option(workers, with_results):
    middleware = [Results(backend=StubBackend(), store_results=True)] if with_results else []
    broker = plain_broker(*middleware)
    times = {}

    @actor(broker=broker)
    def stamp(name, _=None):
        times[name] = time.monotonic()
        return name

    workers(broker)
    start = time.monotonic()
    pipeline([stamp.message("a"), delayed(stamp.message("b"), 300)], broker=broker).run()
    wait_for(lambda: "b" in times)
    assert times["a"] - start < 0.25
    assert times["b"] - times["a"] >= 0.29


@pytest.mark.parametrize("with_results", [False, True])
def test_pipeline_waits_for_the_larger_of_its_delay_and_its_first_steps(workers, with_results):
    middleware = [Results(backend=StubBackend(), store_results=True)] if with_results else []
    broker = plain_broker(*middleware)
    times = {}

    @actor(broker=broker)
    def stamp(name, _=None):
        times[name] = time.monotonic()

    workers(broker)
    start = time.monotonic()
    pipeline([delayed(stamp.message("a"), 50), stamp.message("b")], broker=broker).run(delay=300)
    pipeline([delayed(stamp.message("c"), 300), stamp.message("d")], broker=broker).run(delay=50)
    wait_for(lambda: "b" in times and "d" in times)
    assert times["a"] - start >= 0.29
    assert times["c"] - start >= 0.29


def test_a_bad_delay_option_fails_at_run_with_nothing_sent():
    broker = StubBroker(middleware=[Pipelines(), Results(backend=StubBackend())])

    @actor(broker=broker)
    def step(_=None):
        pass

    with pytest.raises(ValueError, match="delay"):
        group([step.message(), delayed(step.message(), -5)], broker=broker).run()
    assert broker.queues["default"].empty


# Results --------------------------------------------------------------------------------


@pytest.fixture
def results_broker():
    backend = StubBackend()
    broker = StubBroker(middleware=[AgeLimit(), Pipelines(), Retries(max_retries=0), Results(backend=backend)])
    yield broker, backend
    broker.close()


def test_result_failure_reads_like_dramatiqs_and_names_the_message(results_broker, workers):
    broker, backend = results_broker

    @actor(broker=broker, store_results=True)
    def explodes():
        raise KeyError("missing thing")

    message = explodes.send()
    workers(broker)
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True, timeout=5000)
    assert str(info.value) == "actor raised KeyError: 'missing thing'"
    assert info.value.orig_exc_type == "KeyError"
    assert info.value.orig_exc_msg == "'missing thing'"
    assert info.value.message_id == message.message_id


def test_a_bare_value_stored_with_store_is_read_back_as_it_is():
    backend = StubBackend()
    message = Message(queue_name="default", actor_name="a", args=(), kwargs={}, options={})
    backend._store(backend.build_message_key(message), {"answer": 42, "other": 1}, 60_000)
    assert backend.get_result(message) == {"answer": 42, "other": 1}
    backend._store(backend.build_message_key(message), 7, 60_000)
    assert backend.get_result(message, block=True) == 7


def test_a_result_that_looks_like_a_record_is_kept_intact(results_broker, workers):
    broker, backend = results_broker

    @actor(broker=broker, store_results=True)
    def tricky():
        return {"e": {"type": "X", "message": "not a failure"}}

    message = tricky.send()
    workers(broker)
    assert backend.get_result(message, block=True, timeout=5000) == {"e": {"type": "X", "message": "not a failure"}}


@pytest.mark.parametrize("kind", ["stub", "redis"])
def test_namespace_prefix_keys_are_readable_and_round_trip(kind, request, workers):
    if kind == "redis":
        backend = RedisBackend(
            url=request.getfixturevalue("redis_url"), namespace="myns", use_namespace_prefix_keys=True
        )
    else:
        backend = StubBackend(namespace="myns", use_namespace_prefix_keys=True)
    broker = StubBroker(middleware=[Pipelines(), Results(backend=backend, store_results=True)])

    @actor(broker=broker, queue_name="reports")
    def build():
        return "ready"

    message = build.send()
    workers(broker)
    assert backend.build_message_key(message) == f"myns:reports:build:{message.message_id}"
    assert backend.get_result(message, block=True, timeout=5000) == "ready"
    with pytest.raises(TypeError, match="pass the message"):
        backend.get_result(message.message_id)
    backend.close()


def test_default_keys_still_work_with_the_message_id_alone():
    backend = StubBackend(namespace="myns")
    assert backend.use_namespace_prefix_keys is False
    assert backend.build_message_key("abc") == "myns:m:abc"


def test_after_nack_copes_with_a_plain_message_of_an_unknown_actor(redis_url):
    backend = RedisBackend(url=redis_url)
    broker = StubBroker(middleware=[Results(backend=backend)])
    message = Message(queue_name="default", actor_name="nobody", args=(), kwargs={}, options={})
    assert Results(backend=backend).after_nack(broker, message) is None
    broker.close()
    backend.close()


def test_a_message_skipped_without_failing_stores_none(results_broker, workers):
    broker, backend = results_broker

    class SkipAll(Middleware):
        def before_process_message(self, broker, message):
            raise SkipMessage("not today")

    broker.add_middleware(SkipAll())
    ran = []

    @actor(broker=broker, store_results=True)
    def work():
        ran.append(1)
        return 42

    message = work.send()
    workers(broker)
    assert backend.get_result(message, block=True, timeout=5000) is None
    assert ran == []


def test_a_message_skipped_and_failed_stores_a_skip_failure(results_broker, workers):
    broker, backend = results_broker

    @actor(broker=broker, store_results=True, max_age=1)
    def work():
        return 42

    message = work.send_with_options(delay=20)
    workers(broker)
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True, timeout=5000)
    assert info.value.orig_exc_type == "SkipMessage"
    assert info.value.orig_exc_msg == "Message age limit exceeded"
    # Read again later: the same failure, not overwritten.
    with pytest.raises(ResultFailure) as again:
        backend.get_result(message)
    assert again.value.orig_exc_type == "SkipMessage"


def warnings_of(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_a_returned_value_without_results_middleware_warns_once_per_actor(caplog, workers):
    broker = plain_broker()

    @actor(broker=broker)
    def answer():
        return 1

    @actor(broker=broker)
    def nothing():
        return None

    caplog.set_level(logging.WARNING)
    for _ in range(3):
        answer.send()
    nothing.send()
    workers(broker)
    broker.join("default", timeout=10_000)
    found = [text for text in warnings_of(caplog) if "Consider adding the Results middleware" in text]
    assert len(found) == 1 and "'answer'" in found[0]


def test_a_returned_value_without_store_results_warns_it_was_discarded(caplog, workers):
    broker = StubBroker(middleware=[Pipelines(), Results(backend=StubBackend())])

    @actor(broker=broker)
    def answer():
        return 1

    @actor(broker=broker, store_results=True)
    def kept():
        return 2

    caplog.set_level(logging.WARNING)
    answer.send()
    kept.send()
    workers(broker)
    broker.join("default", timeout=10_000)
    found = [text for text in warnings_of(caplog) if "discarded" in text]
    assert len(found) == 1 and "'answer'" in found[0]


@pytest.mark.parametrize("with_results", [False, True])
def test_pipeline_steps_do_not_warn_about_their_values(caplog, workers, with_results):
    middleware = [Results(backend=StubBackend())] if with_results else []
    broker = plain_broker(*middleware)
    done = threading.Event()

    @actor(broker=broker)
    def step(x):
        return x + 1

    @actor(broker=broker)
    def last(x):
        done.set()

    caplog.set_level(logging.WARNING)
    pipeline([step.message(1), step.message(), last.message()], broker=broker).run()
    workers(broker)
    assert done.wait(10)
    broker.join("default", timeout=10_000)
    assert not [text for text in warnings_of(caplog) if "discarded" in text]

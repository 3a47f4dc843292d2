"""Tests for django_actors.composition: pipelines and groups (issue 3).

Every test that takes the ``composition_broker`` fixture runs twice: on the
stub broker with the stub results backend, and on the Redis broker with the
Redis results backend against the suite's real redis-server (``BROKERS``).
Workers are real threads; waits poll a condition with a bounded timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import django_actors
from django_actors import composition, group, pipeline
from django_actors.broker import Broker, NoResultsBackend, default_middleware, set_broker
from django_actors.brokers.stub import StubBroker
from django_actors.errors import ConnectionClosed, MessageTooLarge, Retry
from django_actors.message import Message
from django_actors.middleware import CurrentMessage, Middleware
from django_actors.results import CompositionCancelled, ResultFailure, ResultMissing, Results, ResultTimeout
from django_actors.worker import Worker

from .redis_helpers import wait_for as wait_until

#: The brokers every composition test runs on (each with its own results backend).
BROKERS = ["stub", pytest.param("redis", marks=pytest.mark.redis)]


# Fixtures and helpers ------------------------------------------------------------------


class Recorder(Middleware):
    """Records every message as it is enqueued (a copy of what the broker got)."""

    def __init__(self) -> None:
        self.messages: list[Message[Any]] = []
        self._lock = threading.Lock()

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        with self._lock:
            self.messages.append(message)

    def of(self, actor_name: str) -> list[Message[Any]]:
        with self._lock:
            return [m for m in self.messages if m.actor_name == actor_name]


def _build_broker(kind: str, request: pytest.FixtureRequest) -> Broker:
    if kind == "stub":
        return request.getfixturevalue("stub_broker")
    from django_actors import broker as broker_module
    from django_actors.brokers.redis import RedisBroker
    from django_actors.results.backends.redis import RedisBackend

    url = request.getfixturevalue("redis_url")
    previous = broker_module._broker
    broker = RedisBroker(
        url=url,
        middleware=[*default_middleware(), CurrentMessage(), Results(backend=RedisBackend(url=url))],
    )
    set_broker(broker)

    def restore() -> None:
        broker.close()
        broker_module._broker = previous
        if previous is not None:
            set_broker(previous)

    request.addfinalizer(restore)
    return broker


@pytest.fixture(params=BROKERS)
def composition_broker(request: pytest.FixtureRequest) -> Broker:
    """A broker with a results backend, installed as the global broker."""
    return _build_broker(request.param, request)


@pytest.fixture
def recorder(composition_broker: Broker) -> Recorder:
    """A middleware on ``composition_broker`` recording every enqueued message."""
    middleware = Recorder()
    composition_broker.add_middleware(middleware)
    return middleware


@pytest.fixture
def start_worker(composition_broker: Broker) -> Iterator[Callable[..., Worker]]:
    """Start workers on ``composition_broker``; they are stopped after the test."""
    workers: list[Worker] = []

    def start(threads: int = 4) -> Worker:
        worker = Worker(composition_broker, worker_timeout=50, worker_threads=threads)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=10_000)


class Gates:
    """Named events actors block on; all are opened before the workers stop."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def open_all(self) -> None:
        with self._lock:
            for event in self._events.values():
                event.set()


@pytest.fixture
def gates(start_worker: Callable[..., Worker]) -> Iterator[Gates]:
    """Events for actors to wait on (set up after, so torn down before, the workers)."""
    found = Gates()
    yield found
    found.open_all()


def size_for(broker: Broker, full: int, networked: int) -> int:
    """The full size on the in-memory stub broker; a smaller one where every
    step costs network round trips (the property under test is the same)."""
    return full if isinstance(broker, StubBroker) else networked


class CallLog:
    """A thread-safe list of calls made by actors."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._lock = threading.Lock()

    def add(self, value: Any) -> None:
        with self._lock:
            self.calls.append(value)

    def __len__(self) -> int:
        with self._lock:
            return len(self.calls)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.calls)


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: Any, *names: str) -> dict[str, list[Any]]:
    """Wrap methods of ``obj`` (the real ones still run) and record each call's first argument."""
    seen: dict[str, list[Any]] = {name: [] for name in names}
    for name in names:
        original = getattr(obj, name)

        def wrapper(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            seen[_name].append(args[0] if args else None)
            return _original(*args, **kwargs)

        monkeypatch.setattr(obj, name, wrapper)
    return seen


# Pipelines -------------------------------------------------------------------------------


def test_pipeline_feeds_each_result_to_the_next_step(composition_broker, start_worker):
    @django_actors.actor(store_results=True)
    def add(x, y):
        return x + y

    first, second, third = add.message(1, 2), add.message(10), add.message(100)
    p = first | second | third
    assert isinstance(p, pipeline)
    assert len(p) == 3
    assert [m.message_id for m in p.messages] == [first.message_id, second.message_id, third.message_id]
    assert p.run() is p
    start_worker()

    assert p.get_result(block=True, timeout=10_000) == 113
    assert p.get_results() == [3, 13, 113]
    assert p.get_results(block=True) == [3, 13, 113]
    assert p.completed
    assert p.completed_count == 3
    # Each step ran under its own message id, so its stored result is found by it.
    assert second.get_result(block=True, timeout=5_000) == 13


def test_pipe_ignore_as_message_option_and_actor_option(composition_broker, start_worker):
    @django_actors.actor
    def produce():
        return "ignored"

    @django_actors.actor
    def echo(*args):
        return list(args)

    @django_actors.actor(pipe_ignore=True)
    def ignoring(*args):
        return list(args)

    p = produce.message() | echo.message_with_options(args=(1,), pipe_ignore=True) | echo.message(2)
    q = produce.message() | ignoring.message(3) | echo.message()
    p.run()
    q.run()
    start_worker()
    assert p.get_results(block=True, timeout=10_000) == ["ignored", [1], [2, [1]]]
    assert q.get_results(block=True, timeout=10_000) == ["ignored", [3], [[3]]]


def test_or_operator_builds_flat_pipelines_without_touching_operands(composition_broker):
    @django_actors.actor
    def step(x=None):
        return x

    a, b, c, d = (step.message() for _ in range(4))
    ab = a | b
    assert len(ab) == 2
    assert len(ab | c) == 3
    assert len(a | (b | c)) == 3
    assert len(ab | (c | d)) == 4
    assert len(ab) == 2, "| must build a new pipeline"
    # The steps keep their ids; each carries the rest of the chain (dramatiq's form).
    assert [m.message_id for m in (ab | c).messages] == [a.message_id, b.message_id, c.message_id]
    assert [m.message_id for m in (a | (b | c)).messages] == [a.message_id, b.message_id, c.message_id]

    g = group([c, d])
    chord = ab | g
    assert isinstance(chord, pipeline)
    assert chord.children == [a, b, g]
    assert (g | a).children == [g, a]
    assert (a | g).children == [a, g]
    assert (g | (c | d)).children == [g, c, d]
    assert ab.id != (ab | c).id

    with pytest.raises(TypeError, match="int"):
        ab | 5
    with pytest.raises(TypeError, match="str"):
        a | "next"
    with pytest.raises(TypeError, match=r"actor\.message"):
        step | step


def test_results_missing_and_timeouts(composition_broker):
    @django_actors.actor
    def step(x=None):
        return x

    p = pipeline([step.message(), step.message()]).run()
    g = group([step.message(1), step.message(2)]).run()
    # No worker: nothing finishes.
    with pytest.raises(ResultMissing):
        p.get_result()
    with pytest.raises(ResultMissing):
        p.get_results()
    with pytest.raises(ResultMissing):
        g.get_results()
    start = time.monotonic()
    with pytest.raises(ResultTimeout):
        p.get_result(block=True, timeout=200)
    assert time.monotonic() - start >= 0.19
    with pytest.raises(ResultTimeout):
        g.wait(timeout=100)
    with pytest.raises(ResultTimeout):
        g.get_results(block=True, timeout=100)
    assert not p.completed
    assert p.completed_count == 0
    assert g.completed_count == 0


def test_run_twice_is_a_clear_error(composition_broker):
    @django_actors.actor
    def step(x=None):
        return x

    p = step.message() | step.message()
    g = group([step.message()])
    assert p.run() is p
    assert g.run() is g
    with pytest.raises(RuntimeError, match="pipeline already ran"):
        p.run()
    with pytest.raises(RuntimeError, match="group already ran"):
        g.run()
    with pytest.raises(RuntimeError, match="already ran"):
        g.run_on_commit()
    with pytest.raises(RuntimeError, match="before the group runs"):
        g.add_completion_callback(step.message())


def test_empty_pipeline_is_refused_at_run(composition_broker, recorder):
    @django_actors.actor
    def step(x=None):
        return x

    empty = pipeline([])
    assert len(empty) == 0
    with pytest.raises(ValueError, match="at least one step"):
        empty.run()
    with pytest.raises(ValueError, match="at least one step"):
        group([step.message(), pipeline([])]).run()
    assert recorder.messages == []
    # Adding steps to an empty pipeline is how some code builds them.
    assert len(empty | step.message()) == 1


def test_empty_group_finishes_at_once_and_fires_callbacks_once(composition_broker, start_worker):
    log = CallLog()

    @django_actors.actor
    def done(tag, *results):
        log.add((tag, list(results)))

    g = group([])
    g.add_completion_callback(done.message("plain"))
    g.add_completion_callback(done.message("with"), with_results=True)
    g.run()
    assert g.get_results() == []
    g.wait(timeout=1_000)
    assert g.completed
    assert g.completed_count == 0
    assert composition.progress(g.id)["status"] == "completed"
    worker = start_worker()
    wait_until(lambda: len(log) == 2, what="both callbacks")
    worker.join(timeout=5_000)
    assert sorted(log.snapshot()) == [("plain", []), ("with", [[]])]


def test_children_must_be_messages_pipelines_or_groups(composition_broker):
    @django_actors.actor
    def step(x=None):
        return x

    with pytest.raises(TypeError, match="not str"):
        pipeline([step.message(), "step"])
    with pytest.raises(TypeError, match="not int"):
        group([step.message(), 42])
    with pytest.raises(TypeError, match="not Actor"):
        group([step])
    with pytest.raises(TypeError, match="not dict"):
        pipeline([step.message().asdict()])
    with pytest.raises(TypeError, match="iterable of children, not Message"):
        pipeline(step.message())
    with pytest.raises(TypeError, match="iterable of children, not group"):
        group(group([]))
    g = group([step.message()])
    with pytest.raises(TypeError, match="must be a message, not str"):
        g.add_completion_callback("step")
    with pytest.raises(TypeError, match="must be a message, not Actor"):
        g.add_failure_callback(step)


def test_run_delay_delays_the_first_messages(composition_broker, start_worker):
    started = CallLog()

    @django_actors.actor
    def stamp(tag):
        started.add((tag, time.monotonic()))
        return tag

    start_worker()
    t0 = time.monotonic()
    p = pipeline([stamp.message("p1"), stamp.message_with_options(args=("p2",), pipe_ignore=True)]).run(delay=400)
    g = group([stamp.message("g1"), stamp.message("g2")]).run(delay=400)
    assert p.get_results(block=True, timeout=10_000) == ["p1", "p2"]
    assert g.get_results(block=True, timeout=10_000) == ["g1", "g2"]
    for tag, at in started.snapshot():
        assert at - t0 >= 0.39, f"{tag} started {at - t0:.3f}s after run(delay=400)"
    with pytest.raises(ValueError, match="delay"):
        group([stamp.message("x")]).run(delay=-1)
    with pytest.raises(ValueError, match="delay"):
        group([stamp.message("x")]).run(delay="soon")  # type: ignore[arg-type]


def test_without_a_results_backend_pipelines_nest_pipe_target_like_dramatiq():
    broker = StubBroker()  # default middleware: no Results
    recorder = Recorder()
    broker.add_middleware(recorder)
    log = CallLog()

    @django_actors.actor(broker=broker, actor_name="plain_add")
    def add(x, y):
        return x + y

    @django_actors.actor(broker=broker, actor_name="plain_sink")
    def sink(value):
        log.add(value)

    p = pipeline([add.message(1, 2), add.message(10), sink.message()], broker=broker).run()
    first = recorder.messages[0]
    assert OPTION_NAME not in first.options
    target = first.options["pipe_target"]
    assert target["actor_name"] == "plain_add"
    assert target["options"]["pipe_target"]["actor_name"] == "plain_sink"
    assert len(recorder.messages) == 1

    group([add.message(1, 1), add.message(2, 2)], broker=broker).run()
    assert len(recorder.messages) == 3

    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        wait_until(lambda: log.snapshot() == [13], what="the last step")
        worker.join(timeout=5_000)
    finally:
        worker.stop()
    assert [m.actor_name for m in recorder.messages[3:]] == ["plain_add", "plain_sink"]

    with pytest.raises(NoResultsBackend):
        p.get_result()
    with pytest.raises(NoResultsBackend):
        _ = p.completed_count
    with_callback = group([add.message(1, 1)], broker=broker)
    with_callback.add_completion_callback(sink.message())
    with pytest.raises(NoResultsBackend, match="results backend"):
        with_callback.run()
    with pytest.raises(NoResultsBackend, match="results backend"):
        pipeline([add.message(1, 1), group([add.message(1, 2)])], broker=broker).run()
    sent = len(recorder.messages)
    with pytest.raises(ValueError, match=r"nests too deeply.*Results middleware"):
        pipeline([add.message(1, 1) for _ in range(2_000)], broker=broker).run()
    assert len(recorder.messages) == sent


OPTION_NAME = composition.OPTION


def test_ids_and_membership_options(composition_broker, recorder, start_worker):
    @django_actors.actor
    def step(*args):
        return len(args)

    inner_group = group([step.message(), step.message() | step.message()])
    p = step.message() | inner_group | step.message()
    g = group([step.message()])
    assert p.id == p.pipeline_id
    assert g.id == g.group_id
    assert inner_group.id == inner_group.group_id
    assert len({p.id, g.id, inner_group.id}) == 3
    assert all(isinstance(i, str) and len(i) >= 16 for i in (p.id, g.id))

    p.run()
    first = recorder.messages[0].options[OPTION_NAME]
    assert first == {"id": p.id, "pos": 0, "path": [p.id]}
    start_worker()
    p.wait(timeout=10_000)

    memberships = [m.options[OPTION_NAME] for m in recorder.of("step")]
    assert len(memberships) == 5
    assert all(ms["path"][0] == p.id for ms in memberships)
    inner_pipeline = inner_group.children[1]
    assert [ms for ms in memberships if ms["id"] == inner_group.id] == [
        {"id": inner_group.id, "pos": 0, "path": [p.id, inner_group.id]}
    ]
    nested = [ms for ms in memberships if ms["id"] == inner_pipeline.id]
    assert [ms["pos"] for ms in nested] == [0, 1]
    assert all(ms["path"] == [p.id, inner_group.id, inner_pipeline.id] for ms in nested)
    assert [ms["pos"] for ms in memberships if ms["id"] == p.id] == [0, 2]


# Groups ----------------------------------------------------------------------------------


def test_group_results_are_in_member_order_not_completion_order(composition_broker, start_worker, gates):
    @django_actors.actor
    def member(i):
        if i == 0:
            assert gates["first"].wait(10)
        return i * 10

    g = group([member.message(i) for i in range(6)])
    assert len(g) == 6
    g.run()
    start_worker()
    wait_until(lambda: g.completed_count == 5, what="every member but the first")
    assert not g.completed
    with pytest.raises(ResultMissing):
        g.get_results()
    gates["first"].set()
    g.wait(timeout=10_000)
    assert g.get_results() == [0, 10, 20, 30, 40, 50]
    assert g.completed
    assert g.completed_count == 6


def test_completion_callbacks_fire_exactly_once_despite_duplicate_deliveries(
    composition_broker, recorder, start_worker
):
    log = CallLog()

    @django_actors.actor
    def member(i):
        return i

    @django_actors.actor
    def on_done(tag, *results):
        log.add((tag, list(results)))

    g = group([member.message(i) for i in range(5)])
    g.add_completion_callback(on_done.message("plain"))
    g.add_completion_callback(on_done.message("results"), with_results=True)
    g.run()
    originals = recorder.of("member")
    assert len(originals) == 5
    # At-least-once delivery: every member is delivered twice, same message_id and options.
    for message in originals:
        composition_broker.enqueue(message)
    worker = start_worker()
    g.wait(timeout=10_000)
    worker.join(timeout=10_000)
    assert sorted(log.snapshot()) == [("plain", []), ("results", [[0, 1, 2, 3, 4]])]
    assert g.completed_count == 5

    # Late duplicates, after the group finished, change nothing either.
    for message in originals:
        composition_broker.enqueue(message)
    worker.join(timeout=10_000)
    assert len(log) == 2
    assert g.get_results() == [0, 1, 2, 3, 4]
    assert g.completed_count == 5


def _meet_in_add_member(monkeypatch: pytest.MonkeyPatch, backend: Any, composition_id: str) -> threading.Barrier:
    """Make the two deliveries of member 0 of a composition both finish
    recording it in the completion set before either goes on."""
    barrier = threading.Barrier(2, timeout=10)
    original = backend._add_member

    def add_member(set_key: str, member: int, ttl: int, records: Any = None) -> Any:
        outcome = original(set_key, member, ttl, records)
        if composition_id in set_key and set_key.endswith(":done") and member == 0:
            barrier.wait()
        return outcome

    monkeypatch.setattr(backend, "_add_member", add_member)
    return barrier


def test_concurrent_duplicate_deliveries_act_once(composition_broker, recorder, start_worker, monkeypatch):
    log = CallLog()

    @django_actors.actor
    def member(i):
        return i

    @django_actors.actor
    def on_done(tag):
        log.add(tag)

    backend = composition_broker.get_results_backend()
    g = group([member.message(1)])
    g.add_completion_callback(on_done.message("group"))
    barrier = _meet_in_add_member(monkeypatch, backend, g.id)
    g.run()
    composition_broker.enqueue(recorder.of("member")[0])  # the duplicate, queued with the original
    worker = start_worker()
    g.wait(timeout=10_000)
    worker.join(timeout=10_000)
    assert not barrier.broken
    assert log.snapshot() == ["group"], "both deliveries completed the group; the callback fired once"

    p = member.message(2) | on_done.message()
    barrier = _meet_in_add_member(monkeypatch, backend, p.id)
    p.run()
    composition_broker.enqueue(recorder.of("member")[-1])
    assert p.get_result(block=True, timeout=10_000) is None
    worker.join(timeout=10_000)
    assert not barrier.broken
    assert log.snapshot() == ["group", 2], "the next step was sent once"


def test_a_redelivery_finishes_what_a_broken_delivery_left_undone(composition_broker, start_worker, monkeypatch):
    log = CallLog()
    runs = CallLog()

    @django_actors.actor
    def member(i):
        runs.add(i)
        return i

    @django_actors.actor
    def on_done(tag):
        log.add(tag)

    # The broker connection drops exactly when the completion callback and
    # the next pipeline step are sent: the delivery that finished the group
    # (or the first step) breaks mid-way. The worker hands such a message back
    # instead of acking it, and its redelivery (same message id, so it holds
    # the claims the broken delivery took) finishes the job.
    failures = {"callback": 1, "step 2": 1}
    original = composition_broker.enqueue_many

    def flaky_enqueue_many(messages: Any, **kwargs: Any) -> Any:
        messages = list(messages)
        membership = messages[0].options.get(OPTION_NAME) if messages else None
        if messages and messages[0].actor_name == "on_done":
            what = "callback"
        else:
            what = "step 2" if membership and membership["pos"] == 1 else ""
        if failures.get(what):
            failures[what] -= 1
            raise ConnectionClosed("connection lost while sending")
        return original(messages, **kwargs)

    monkeypatch.setattr(composition_broker, "enqueue_many", flaky_enqueue_many)
    monkeypatch.setattr(composition, "RECOVERY_WAIT", 300)
    g = group([member.message(1)])
    g.add_completion_callback(on_done.message("group"))
    g.run()
    p = (member.message(2) | member.message()).run()
    start_worker()
    assert g.get_results(block=True, timeout=10_000) == [1]
    assert p.get_results(block=True, timeout=10_000) == [2, 2]
    wait_until(lambda: log.snapshot() == ["group"], what="the completion callback")
    assert failures == {"callback": 0, "step 2": 0}
    # The broken deliveries ran again: the group's member and the pipeline's
    # first step twice each, the pipeline's second step once.
    assert sorted(runs.snapshot()) == [1, 1, 2, 2, 2]
    assert log.snapshot() == ["group"]


def test_a_failed_member_fails_the_group_promptly(composition_broker, start_worker, gates):
    completed = CallLog()
    failures = CallLog()

    @django_actors.actor(max_retries=0)
    def member(i):
        if i == 2:
            raise ValueError("member 2 broke")
        if i == 4:
            assert gates["slow"].wait(10)
        return i

    @django_actors.actor
    def on_done():
        completed.add(True)

    @django_actors.actor
    def on_failure(tag, error):
        failures.add((tag, error))

    g = group([member.message(i) for i in range(5)])
    g.add_completion_callback(on_done.message())
    g.add_failure_callback(on_failure.message("batch"))
    g.run()
    start_worker()
    start = time.monotonic()
    with pytest.raises(ResultFailure) as info:
        g.get_results(block=True, timeout=30_000)
    assert time.monotonic() - start < 5, "the failure must not wait for the timeout"
    assert not isinstance(info.value, CompositionCancelled)
    assert info.value.orig_exc_type == "ValueError"
    assert "member 2 broke" in str(info.value)
    with pytest.raises(ResultFailure):
        g.wait(timeout=30_000)
    wait_until(lambda: len(failures) == 1, what="the failure callback")
    assert failures.snapshot() == [("batch", {"type": "ValueError", "message": "member 2 broke"})]
    state = composition.progress(g.id)
    assert state["status"] == "failed"
    assert state["error"]["type"] == "ValueError"

    gates["slow"].set()  # the last member still runs and counts, but the group stays failed
    wait_until(lambda: g.completed_count == 4, what="the other members")
    assert not g.completed
    assert completed.snapshot() == []
    assert composition.progress(g.id)["status"] == "failed"


def test_the_failure_callback_fires_once_when_several_members_fail(composition_broker, start_worker):
    failures = CallLog()

    @django_actors.actor(max_retries=0)
    def broken(i):
        raise RuntimeError(f"broken {i}")

    @django_actors.actor
    def on_failure(error):
        failures.add(error)

    g = group([broken.message(i) for i in range(6)])
    g.add_failure_callback(on_failure.message())
    g.run()
    worker = start_worker()
    with pytest.raises(ResultFailure, match="broken"):
        g.wait(timeout=10_000)
    worker.join(timeout=10_000)
    assert len(failures) == 1
    assert failures.snapshot()[0]["type"] == "RuntimeError"


def test_a_member_with_an_unknown_actor_fails_the_group(composition_broker, start_worker):
    @django_actors.actor
    def member(i):
        return i

    ghost = Message(queue_name="default", actor_name="no_such_actor", args=(), kwargs={}, options={})
    g = group([member.message(1), ghost])
    g.run()
    start_worker()
    start = time.monotonic()
    with pytest.raises(ResultFailure, match="no_such_actor"):
        g.get_results(block=True, timeout=30_000)
    assert time.monotonic() - start < 5


def test_a_member_retried_after_an_error_counts_once(composition_broker, start_worker):
    attempts = CallLog()
    log = CallLog()

    @django_actors.actor(max_retries=3)
    def flaky(i):
        attempts.add(i)
        if i % 2 and attempts.snapshot().count(i) == 1:
            raise Retry("try again", delay=10)
        return i

    @django_actors.actor
    def on_done():
        log.add(True)

    g = group([flaky.message(i) for i in range(4)])
    g.add_completion_callback(on_done.message())
    g.run()
    worker = start_worker()
    assert g.get_results(block=True, timeout=10_000) == [0, 1, 2, 3]
    worker.join(timeout=10_000)
    assert len(attempts) == 6
    assert g.completed_count == 4
    assert log.snapshot() == [True]


# Bad input -------------------------------------------------------------------------------


def test_an_unencodable_argument_fails_at_run_with_nothing_sent(composition_broker, recorder):
    @django_actors.actor
    def step(x=None):
        return x

    g = group([step.message(1), step.message(object())])
    with pytest.raises(TypeError, match=r"positional argument 0 \(object\)"):
        g.run()
    p = step.message(1) | group([step.message(2), step.message({1, 2})])
    with pytest.raises(TypeError, match=r"set"):
        p.run()
    assert recorder.messages == []
    with pytest.raises(composition.CompositionNotFound):
        composition.progress(g.id)
    # Nothing ran, so the (fixed) composition may be built again and run.
    assert group([step.message(1)]).run()


def test_a_too_large_message_fails_at_run_with_nothing_sent(composition_broker, recorder, monkeypatch):
    @django_actors.actor
    def step(x=None):
        return x

    monkeypatch.setattr(composition_broker, "max_message_size", 4_000)
    with pytest.raises(MessageTooLarge, match="4000"):
        group([step.message(1), step.message("x" * 5_000)]).run()
    assert recorder.messages == []


def test_an_unencodable_result_fails_the_pipeline_instead_of_hanging(composition_broker, start_worker):
    @django_actors.actor
    def make():
        return object()

    @django_actors.actor
    def after(value):
        return value

    p = make.message() | after.message()
    p.run()
    start_worker()
    start = time.monotonic()
    with pytest.raises(ResultFailure, match="TypeError"):
        p.get_result(block=True, timeout=30_000)
    assert time.monotonic() - start < 5


def test_a_next_step_over_the_size_limit_fails_the_pipeline(composition_broker, start_worker, monkeypatch):
    @django_actors.actor
    def make():
        return "x" * 5_000

    @django_actors.actor
    def after(value):
        return len(value)

    monkeypatch.setattr(composition_broker, "max_message_size", 4_000)
    p = make.message() | after.message()
    p.run()
    start_worker()
    with pytest.raises(ResultFailure) as info:
        p.get_result(block=True, timeout=10_000)
    assert info.value.orig_exc_type == "MessageTooLarge"
    assert p.completed_count == 1


# Progress from counters, batches -----------------------------------------------------------


def test_completed_count_reads_one_counter_for_10000_members(composition_broker, start_worker, monkeypatch):
    """10,000 members on the stub broker (2,000 on Redis), the backend's calls counted."""

    @django_actors.actor
    def member(i):
        return i

    size = size_for(composition_broker, 10_000, 2_000)
    g = group([member.message(i) for i in range(size)])
    g.run()
    backend = composition_broker.get_results_backend()
    calls = count_calls(monkeypatch, backend, "_get_many", "_count_members")
    assert g.completed_count == 0
    assert not g.completed
    assert len(calls["_count_members"]) == 2
    assert calls["_get_many"] == []
    monkeypatch.undo()

    start_worker(threads=8)
    g.wait(timeout=60_000)
    calls = count_calls(monkeypatch, backend, "_get_many", "_count_members")
    assert g.completed_count == size
    assert g.completed
    assert len(calls["_count_members"]) == 2, "one round trip per read, not one per member"
    assert calls["_get_many"] == []
    state = composition.progress(g.id)
    assert state["total"] == state["completed"] == size
    assert state["status"] == "completed"
    assert len(calls["_count_members"]) == 3
    assert len(calls["_get_many"]) == 1


def test_group_run_enqueues_10000_messages_in_a_few_batches(composition_broker, monkeypatch):
    @django_actors.actor
    def member(i):
        return i

    calls = count_calls(monkeypatch, composition_broker, "_enqueue_many")
    backend_calls = count_calls(monkeypatch, composition_broker.get_results_backend(), "_store_many")
    group([member.message(i) for i in range(10_000)]).run()
    batches = [len(items) for items in calls["_enqueue_many"]]
    assert sum(batches) == 10_000
    assert len(batches) <= 20, f"{len(batches)} broker round trips for one group"
    assert min(batches) > 1
    assert len(backend_calls["_store_many"]) == 1, "the composition records are written in one call"


# Cancel ------------------------------------------------------------------------------------


def test_cancel_pipeline_stops_the_steps_not_started(composition_broker, start_worker, gates):
    ran = CallLog()
    started = threading.Event()

    @django_actors.actor
    def first():
        started.set()
        assert gates["first"].wait(10)
        return 1

    @django_actors.actor
    def later(x):
        ran.add(x)
        return x + 1

    p = first.message() | later.message() | later.message()
    with pytest.raises(RuntimeError, match="has not run"):
        p.cancel()
    p.run()
    worker = start_worker()
    assert started.wait(10)

    outcome: dict[str, Any] = {}

    def waiter() -> None:
        begin = time.monotonic()
        try:
            p.get_result(block=True, timeout=30_000)
        except Exception as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - begin

    thread = threading.Thread(target=waiter)
    thread.start()
    assert p.cancel() is True
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], CompositionCancelled)
    assert isinstance(outcome["error"], ResultFailure)
    assert "cancelled" in str(outcome["error"])
    assert outcome["elapsed"] < 5

    gates["first"].set()
    wait_until(lambda: p.completed_count == 1, what="the running step to finish")
    worker.join(timeout=10_000)
    assert ran.snapshot() == []
    assert p.cancelled
    assert composition.progress(p.id)["status"] == "cancelled"
    assert p.cancel() is False
    with pytest.raises(CompositionCancelled):
        p.get_results()


def test_cancel_group_skips_every_member_not_started(composition_broker, start_worker, gates):
    ran = CallLog()
    started = threading.Event()

    @django_actors.actor(store_results=True)
    def member(i):
        ran.add(i)
        if i == 0:
            started.set()
            assert gates["first"].wait(10)
        return i

    g = group([member.message(i) for i in range(10)])
    g.run()
    worker = start_worker(threads=1)
    assert started.wait(10)
    assert composition.cancel(g.id) is True  # by id, without the object
    with pytest.raises(CompositionCancelled):
        g.wait(timeout=30_000)
    gates["first"].set()
    worker.join(timeout=10_000)
    assert ran.snapshot() == [0]
    assert g.completed_count == 1
    # A caller waiting on a skipped member's own result is told, not left hanging.
    with pytest.raises(CompositionCancelled):
        g.children[5].get_result(block=True, timeout=5_000)
    assert g.children[0].get_result() == 0


def test_cancel_after_the_end_changes_nothing(composition_broker, start_worker):
    @django_actors.actor
    def member(i):
        return i

    g = group([member.message(i) for i in range(3)])
    g.run()
    start_worker()
    assert g.get_results(block=True, timeout=10_000) == [0, 1, 2]
    assert g.cancel() is False
    assert composition.cancel(g.id) is False
    assert g.get_results() == [0, 1, 2]
    assert composition.progress(g.id)["status"] == "completed"


def test_cancel_and_progress_by_id(composition_broker):
    @django_actors.actor
    def member(i):
        return i

    g = group([member.message(i) for i in range(4)]).run()
    p = (member.message(0) | member.message()).run()
    assert composition.progress(g.id) == {
        "id": g.id,
        "kind": "group",
        "total": 4,
        "completed": 0,
        "status": "running",
        "error": None,
        "parent": None,
        "root": g.id,
    }
    assert composition.progress(p.id)["kind"] == "pipeline"
    assert django_actors.composition_progress(p.id)["total"] == 2
    assert django_actors.cancel_composition(p.id) is True
    assert composition.progress(p.id)["status"] == "cancelled"
    assert composition.progress(p.id)["error"]["type"] == "Cancelled"
    with pytest.raises(django_actors.CompositionNotFound, match="nope"):
        composition.cancel("nope")
    with pytest.raises(LookupError):
        composition.progress("nope")


# Long pipelines ------------------------------------------------------------------------------


def test_step_messages_do_not_grow_with_the_pipeline(composition_broker, recorder):
    @django_actors.actor
    def inc(x=0):
        return x + 1

    sizes = {}
    for length in (10, 100, 5_000):
        recorder.messages.clear()
        pipeline([inc.message() for _ in range(length)]).run()
        assert len(recorder.messages) == 1, "only the first step is sent at run()"
        sizes[length] = len(recorder.messages[0].encode())
    assert max(sizes.values()) - min(sizes.values()) <= 4, sizes
    assert sizes[5_000] < 1_000, sizes


def test_a_pipeline_of_5000_steps_runs_to_the_end(composition_broker, recorder, start_worker):
    """5,000 steps on the stub broker (1,200 on Redis): no recursion limit anywhere."""

    @django_actors.actor
    def inc(x=0):
        return x + 1

    size = size_for(composition_broker, 5_000, 1_200)
    p = pipeline([inc.message() for _ in range(size)])
    assert len(p) == size
    p.run()
    start_worker()
    assert p.get_result(block=True, timeout=60_000) == size
    assert p.get_results() == list(range(1, size + 1))
    assert p.completed_count == size
    sizes = [len(m.encode()) for m in recorder.of("inc")]
    assert len(sizes) == size
    assert max(sizes) - min(sizes) <= 8, "a step carries its own input, never the rest of the chain"


# run_on_commit ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_on_commit_runs_only_when_the_transaction_commits(composition_broker, recorder):
    from django.db import transaction

    @django_actors.actor
    def member(i):
        return i

    with pytest.raises(TypeError, match="object"):
        group([member.message(object())]).run_on_commit()
    with transaction.atomic():
        g = group([member.message(1)]).run_on_commit()
        assert recorder.messages == []
        with pytest.raises(RuntimeError, match="already ran"):
            g.run()
    assert len(recorder.of("member")) == 1
    with pytest.raises(RuntimeError, match="already ran"):
        g.run()
    try:
        with transaction.atomic():
            group([member.message(2)]).run_on_commit()
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert len(recorder.of("member")) == 1

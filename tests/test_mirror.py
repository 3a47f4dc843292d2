"""The admin mirror: events recorded by the middleware, written in batches,
states moving only forward, composition progress, workers, pruning,
retry and cancel, and the settings switch."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import django_actors
from django_actors.broker import default_middleware, set_broker
from django_actors.brokers.stub import StubBroker
from django_actors.composition import group, pipeline
from django_actors.message import Message
from django_actors.middleware import CurrentMessage
from django_actors.middleware.mirror import Mirror
from django_actors.mirror import ENQUEUE, NACK, START, SUCCESS, Recorder, cancel_composition, prune, retry_messages
from django_actors.models.mirror import Composition, MessageRecord, WorkerRecord
from django_actors.results.backends.stub import StubBackend
from django_actors.results.middleware import Results
from django_actors.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def make_broker(*, flush_interval: int = 50, backend: Any = None, broker_cls: Any = StubBroker, **kwargs: Any) -> Any:
    middleware = [
        Mirror(flush_interval=flush_interval),
        *default_middleware(),
        CurrentMessage(),
        Results(backend=backend or StubBackend(), store_results=True),
    ]
    return broker_cls(middleware=middleware, **kwargs)


def recorder_of(broker: Any) -> Recorder:
    return next(m for m in broker.middleware if isinstance(m, Mirror)).recorder


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    from django_actors import broker as broker_module

    previous = broker_module._broker
    stub = make_broker()
    set_broker(stub)
    yield stub
    stub.emit_before("process_stop")
    stub.close()
    broker_module._broker = previous


@pytest.fixture
def worker(broker: StubBroker) -> Iterator[Worker]:
    running = Worker(broker, worker_timeout=50, worker_threads=4)
    running.start()
    yield running
    running.stop(timeout=10_000)


def drain(broker: Any, worker: Worker) -> None:
    """Wait until the queues are empty, then write what the mirror buffered."""
    deadline = time.monotonic() + 20
    for _ in range(2):  # twice: a queue may get messages while another is joined
        wait_for(lambda: set(worker.consumers) >= broker.get_declared_queues(), what="consumers for every queue")
        for queue_name in sorted(broker.get_declared_queues()):
            # Failures are mirrored, not raised (a stub broker's join raises them by default).
            options = {"fail_fast": False} if isinstance(broker, StubBroker) else {}
            broker.join(queue_name, timeout=max(int((deadline - time.monotonic()) * 1000), 0), **options)
    worker.join(timeout=20_000)
    recorder_of(broker).flush()


# Messages ---------------------------------------------------------------------------


def test_a_message_is_mirrored_from_enqueue_to_success(broker, worker):
    @django_actors.actor(queue_name="mirror-basic")
    def add(x, y):
        return {"sum": x + y}

    message = add.send(2, y=3)
    drain(broker, worker)
    row = MessageRecord.objects.get(pk=message.message_id)
    assert row.status == "succeeded"
    assert row.actor_name == "add"
    assert row.queue_name == "mirror-basic"
    assert row.args_preview == "2, y=3"
    assert row.result_preview == "{'sum': 5}"
    assert row.started_at is not None and row.finished_at is not None
    assert row.finished_at >= row.started_at
    assert row.worker == recorder_of(broker).worker_name
    assert row.composition_id is None


def test_the_flusher_thread_writes_without_being_asked(broker, worker):
    @django_actors.actor(queue_name="mirror-auto")
    def noop():
        return None

    message = noop.send()
    wait_for(
        lambda: MessageRecord.objects.filter(pk=message.message_id, status="succeeded").exists(),
        what="the flusher to write the success",
    )


def test_a_late_enqueued_event_never_overwrites_succeeded(broker):
    message = Message(queue_name="q", actor_name="a", args=(1,), kwargs={}, options={})
    worker_side = Recorder(flush_interval=60_000)
    web_side = Recorder(flush_interval=60_000)
    worker_side.record(broker, START, message)
    worker_side.record(broker, SUCCESS, message, 42)
    worker_side.flush()
    web_side.record(broker, ENQUEUE, message)  # the web process flushes later
    web_side.flush()
    row = MessageRecord.objects.get(pk=message.message_id)
    assert row.status == "succeeded"
    assert row.result_preview == "42"
    worker_side.stop()
    web_side.stop()


def test_a_late_started_event_does_not_undo_a_failure(broker):
    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    first, second = Recorder(flush_interval=60_000), Recorder(flush_interval=60_000)
    first.record(broker, NACK, message, (ValueError("boom"), None))
    first.flush()
    second.record(broker, START, message)
    second.flush()
    assert MessageRecord.objects.get(pk=message.message_id).status == "failed"
    first.stop()
    second.stop()


def test_a_retry_moves_the_message_on_and_keeps_the_traceback(broker, worker):
    attempts = []

    @django_actors.actor(queue_name="mirror-retry", max_retries=3, min_backoff=10, max_backoff=20)
    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    message = flaky.send()
    drain(broker, worker)
    row = MessageRecord.objects.get(pk=message.message_id)
    assert row.status == "succeeded"
    assert row.retries == 1
    assert "RuntimeError: first attempt fails" in row.traceback


def test_a_failed_message_is_mirrored_with_its_traceback(broker, worker):
    @django_actors.actor(queue_name="mirror-fail", max_retries=0)
    def broken():
        raise KeyError("missing thing")

    message = broken.send()
    drain(broker, worker)
    row = MessageRecord.objects.get(pk=message.message_id)
    assert row.status == "failed"
    assert "KeyError: 'missing thing'" in row.traceback
    assert "in broken" in row.traceback  # a real traceback, not just the message


def test_an_undecodable_message_is_mirrored_as_failed_with_its_reason(broker, worker):
    broker.declare_queue("mirror-raw")
    broker.put_raw("mirror-raw", b"\xff not json")
    drain(broker, worker)
    row = wait_for(lambda: MessageRecord.objects.filter(queue_name="mirror-raw").first(), what="the row")
    assert row.status == "failed"
    assert "undecodable message" in row.traceback


def test_previews_are_bounded(broker, worker):
    @django_actors.actor(queue_name="mirror-big")
    def echo(blob, items):
        return blob

    message = echo.send("x" * 100_000, list(range(10_000)))
    drain(broker, worker)
    row = MessageRecord.objects.get(pk=message.message_id)
    assert len(row.args_preview) <= 500
    assert len(row.result_preview) <= 500
    assert row.args_preview.startswith("'xxx")


def test_writes_are_batched_a_constant_number_of_statements_per_flush(broker):
    recorder = Recorder(flush_interval=60_000)

    def statements_for(count: int) -> int:
        for i in range(count):
            message = Message(queue_name="q", actor_name="a", args=(i,), kwargs={}, options={})
            recorder.record(broker, ENQUEUE, message)
            recorder.record(broker, START, message)
            recorder.record(broker, SUCCESS, message, i)
        with CaptureQueriesContext(connection) as queries:
            assert recorder.flush() == 2 * count  # a START is carried by the event that ends it
        return len([q for q in queries.captured_queries if "mirror_message" in q["sql"]])

    assert statements_for(10) == statements_for(1000) == 1
    assert MessageRecord.objects.filter(status="succeeded").count() == 1010
    recorder.stop()


# Compositions ---------------------------------------------------------------------------


def test_a_group_is_mirrored_with_its_progress(broker, worker):
    @django_actors.actor(queue_name="mirror-group")
    def square(x):
        return x * x

    g = group([square.message(i) for i in range(5)]).run()
    g.wait(timeout=10_000)
    drain(broker, worker)
    row = wait_for(
        lambda: Composition.objects.filter(pk=g.id, status="succeeded").first(), what="the group to be succeeded"
    )
    assert (row.kind, row.total, row.completed, row.failed) == ("group", 5, 5, 0)
    assert row.name == "square"
    assert row.parent_id is None and row.root_id == g.id
    assert row.started is not None and row.finished is not None
    members = MessageRecord.objects.filter(composition_id=g.id).order_by("position")
    assert [m.position for m in members] == [0, 1, 2, 3, 4]
    assert [m.result_preview for m in members] == ["0", "1", "4", "9", "16"]
    assert {m.root_id for m in members} == {g.id}


def test_a_pipeline_with_a_nested_group_is_mirrored_as_a_tree(broker, worker):
    @django_actors.actor(queue_name="mirror-tree")
    def fetch(n):
        return n

    @django_actors.actor(queue_name="mirror-tree")
    def split(n, previous):
        return n + previous

    @django_actors.actor(queue_name="mirror-tree")
    def total(values):
        return sum(values)

    inner = group([split.message(1), split.message(2)])
    p = pipeline([fetch.message(10), inner, total.message()]).run()
    assert p.get_result(block=True, timeout=10_000) == 23
    drain(broker, worker)
    outer = wait_for(lambda: Composition.objects.filter(pk=p.id, status="succeeded").first(), what="the pipeline")
    nested = Composition.objects.get(pk=inner.id)
    assert (outer.kind, outer.total, outer.completed) == ("pipeline", 3, 3)
    assert outer.name == "fetch \u2192 group \u2192 total"
    assert (nested.kind, nested.parent_id, nested.root_id, nested.position) == ("group", p.id, p.id, 1)
    assert nested.status == "succeeded" and nested.completed == 2
    steps = {m.actor_name: (m.composition_id, m.position) for m in MessageRecord.objects.filter(root_id=p.id)}
    assert steps == {"fetch": (p.id, 0), "split": (inner.id, 0), "total": (p.id, 2)} or steps["split"][0] == inner.id
    assert MessageRecord.objects.filter(root_id=p.id).count() == 4


def test_a_failed_member_marks_the_group_failed_and_counts_it(broker, worker):
    @django_actors.actor(queue_name="mirror-gfail", max_retries=0)
    def maybe(x):
        if x == 2:
            raise ValueError("two is bad")
        return x

    g = group([maybe.message(i) for i in range(4)]).run()
    drain(broker, worker)
    row = wait_for(lambda: Composition.objects.filter(pk=g.id, status="failed").first(), what="the group to fail")
    assert row.failed == 1
    assert row.completed == 3
    failed = MessageRecord.objects.get(composition_id=g.id, status="failed")
    assert failed.position == 2 and "two is bad" in failed.traceback


def test_cancelling_skips_the_members_not_started(broker):
    @django_actors.actor(queue_name="mirror-cancel")
    def later(x):
        return x

    g = group([later.message(i) for i in range(3)]).run(delay=60_000)
    recorder_of(broker).flush()
    assert Composition.objects.get(pk=g.id).status == "pending"
    assert set(MessageRecord.objects.filter(composition_id=g.id).values_list("status", flat=True)) == {"delayed"}
    assert cancel_composition(g.id) is True
    assert Composition.objects.get(pk=g.id).status == "cancelled"
    assert cancel_composition(g.id) is False  # already cancelled
    # The members are skipped when a worker gets to them.
    for queue in broker.queues.values():
        queue.promote(time.time() * 1000 + 120_000)
    running = Worker(broker, worker_timeout=50, worker_threads=2)
    running.start()
    try:
        drain(broker, running)
    finally:
        running.stop()
    assert set(MessageRecord.objects.filter(composition_id=g.id).values_list("status", flat=True)) == {"skipped"}
    row = wait_for(lambda: Composition.objects.filter(pk=g.id, cancelled=3).first(), what="the skipped count")
    assert row.status == "cancelled"


def test_retrying_a_failed_member_reopens_the_group_and_fires_its_callback_once(broker, worker):
    healed = threading.Event()
    done = []

    @django_actors.actor(queue_name="mirror-reopen", max_retries=0)
    def fragile(x):
        if x == 1 and not healed.is_set():
            raise ConnectionError("service down")
        return x

    @django_actors.actor(queue_name="mirror-reopen")
    def finished(values):
        done.append(values)

    g = group([fragile.message(i) for i in range(3)])
    g.add_completion_callback(finished.message(), with_results=True)
    g.run()
    drain(broker, worker)
    failed = wait_for(
        lambda: MessageRecord.objects.filter(composition_id=g.id, status="failed").first(), what="failure"
    )
    assert Composition.objects.get(pk=g.id).status == "failed"
    healed.set()
    report = retry_messages([failed.pk])
    assert report.requeued == [failed.pk] and report.reopened == [g.id] and report.missing == []
    assert Composition.objects.get(pk=g.id).status == "running"
    g.wait(timeout=10_000)
    drain(broker, worker)
    assert done == [[0, 1, 2]]
    assert MessageRecord.objects.get(pk=failed.pk).status == "succeeded"
    row = wait_for(lambda: Composition.objects.filter(pk=g.id, status="succeeded").first(), what="success")
    assert (row.completed, row.failed) == (3, 0)
    # A second retry finds nothing failed.
    assert retry_messages([failed.pk]).requeued == []


def test_a_group_with_another_unretried_failure_stays_failed(broker, worker):
    @django_actors.actor(queue_name="mirror-partial", max_retries=0)
    def always_fails(x):
        raise ValueError(x)

    g = group([always_fails.message(i) for i in range(2)]).run()
    drain(broker, worker)
    wait_for(lambda: MessageRecord.objects.filter(composition_id=g.id, status="failed").count() == 2, what="failures")
    first = MessageRecord.objects.filter(composition_id=g.id).order_by("position").first()
    report = retry_messages([first.pk])
    assert report.requeued == [first.pk]
    assert report.reopened == []
    assert Composition.objects.get(pk=g.id).status == "failed"


def test_retrying_a_message_that_left_the_dead_letters_reports_it_missing(broker, worker):
    @django_actors.actor(queue_name="mirror-missing", max_retries=0)
    def boom():
        raise ValueError("x")

    message = boom.send()
    drain(broker, worker)
    broker.purge_dead_letters()
    report = retry_messages([message.message_id])
    assert report.missing == [message.message_id] and report.requeued == []
    assert MessageRecord.objects.get(pk=message.message_id).status == "failed"


def test_a_requeued_dead_letter_moves_forward_from_failed(broker, worker):
    calls = []

    @django_actors.actor(queue_name="mirror-requeue", max_retries=0)
    def second_time_lucky():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first")
        return "lucky"

    message = second_time_lucky.send()
    drain(broker, worker)
    assert MessageRecord.objects.get(pk=message.message_id).status == "failed"
    assert retry_messages([message.message_id]).requeued == [message.message_id]
    drain(broker, worker)
    row = MessageRecord.objects.get(pk=message.message_id)
    assert (row.status, row.result_preview) == ("succeeded", "'lucky'")


# Workers, pruning, settings ------------------------------------------------------------------


def test_a_worker_writes_its_heartbeat_and_is_marked_stopped(broker):
    running = Worker(broker, worker_timeout=50, worker_threads=3, queues=["mirror-hb"])
    running.start()
    recorder = recorder_of(broker)
    row = wait_for(lambda: WorkerRecord.objects.filter(pk=recorder.worker_name).first(), what="the heartbeat")
    assert (row.threads, row.queues, row.state) == (3, "mirror-hb", "running")
    running.stop()
    row.refresh_from_db()
    assert row.state == "stopped" and row.stopped is not None


def test_prune_deletes_old_rows_and_keeps_trees_that_still_change(broker):
    old = timezone.now() - datetime.timedelta(days=10)
    now = timezone.now()
    Composition.objects.create(id="old-root", kind="group", root_id="old-root", updated=old)
    Composition.objects.create(id="old-child", kind="group", root_id="old-root", parent_id="old-root", updated=old)
    Composition.objects.create(id="live-root", kind="pipeline", root_id="live-root", updated=old)
    Composition.objects.create(id="live-child", kind="group", root_id="live-root", parent_id="live-root", updated=now)
    MessageRecord.objects.create(
        message_id="m-old-tree",
        actor_name="a",
        queue_name="q",
        status="succeeded",
        composition_id="old-child",
        root_id="old-root",
        updated=now,
    )
    MessageRecord.objects.create(
        message_id="m-live-tree",
        actor_name="a",
        queue_name="q",
        status="succeeded",
        composition_id="live-root",
        root_id="live-root",
        updated=old,
    )
    MessageRecord.objects.create(message_id="m-old", actor_name="a", queue_name="q", status="failed", updated=old)
    MessageRecord.objects.create(message_id="m-new", actor_name="a", queue_name="q", status="failed", updated=now)
    WorkerRecord.objects.create(worker_id="h:1", hostname="h", pid=1, heartbeat=old)
    WorkerRecord.objects.create(worker_id="h:2", hostname="h", pid=2, heartbeat=now)

    deleted = prune(datetime.timedelta(days=7))

    assert deleted == {"compositions": 2, "messages": 2, "workers": 1}
    assert set(Composition.objects.values_list("pk", flat=True)) == {"live-root", "live-child"}
    assert set(MessageRecord.objects.values_list("pk", flat=True)) == {"m-live-tree", "m-new"}
    assert list(WorkerRecord.objects.values_list("pk", flat=True)) == ["h:2"]


def test_the_prune_mirror_command(broker):
    from django.core.management import call_command

    MessageRecord.objects.create(
        message_id="ancient",
        actor_name="a",
        queue_name="q",
        status="succeeded",
        updated=timezone.now() - datetime.timedelta(days=30),
    )
    MessageRecord.objects.create(message_id="recent", actor_name="a", queue_name="q", status="succeeded")
    call_command("prune_mirror", "--older-than", str(7 * 24 * 3600), verbosity=0)
    assert list(MessageRecord.objects.values_list("pk", flat=True)) == ["recent"]


def test_the_prune_mirror_command_rejects_a_bad_age():
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a number of seconds"):
        call_command("prune_mirror", "--older-than", "a week")


def test_the_mirror_is_on_by_default_first_in_the_middleware_and_off_with_one_setting():
    from django.core.exceptions import ImproperlyConfigured

    from django_actors.conf import build_middleware, parse_settings

    stub = {"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "RESULTS": None}
    middleware = build_middleware(parse_settings(stub))
    assert isinstance(middleware[0], Mirror)
    assert middleware[0].recorder.flush_interval == 1000
    assert middleware[0].recorder.retention == 7 * 24 * 3600 * 1000

    tuned = build_middleware(parse_settings({**stub, "MIRROR": {"FLUSH_INTERVAL": 250, "RETENTION": 60_000}}))
    assert (tuned[0].recorder.flush_interval, tuned[0].recorder.retention) == (250, 60_000)

    off = build_middleware(parse_settings({**stub, "MIRROR": {"ENABLED": False}}))
    assert not any(isinstance(m, Mirror) for m in off)

    listed = {**stub, "MIDDLEWARE": ["django_actors.middleware.mirror.Mirror", "django_actors.middleware.Retries"]}
    assert any(isinstance(m, Mirror) for m in build_middleware(parse_settings(listed)))
    listed_off = {**listed, "MIRROR": {"ENABLED": False}}
    assert not any(isinstance(m, Mirror) for m in build_middleware(parse_settings(listed_off)))

    for bad, message in (
        ({"ENABLED": "yes"}, "must be a bool"),
        ({"FLUSH_INTERVAL": 0}, "positive int"),
        ({"RETENTION": "7d"}, "positive int"),
        ({"ENABLE": True}, "unknown key"),
        ("on", "must be a dict"),
    ):
        with pytest.raises(ImproperlyConfigured, match=message):
            parse_settings({**stub, "MIRROR": bad})


# Real brokers and results backends ------------------------------------------------------------


def _scenario(broker: Any, using: str = "default") -> None:
    """A group with a failing member and a pipeline, then a retry from the mirror."""
    healed = threading.Event()

    @django_actors.actor(queue_name="mirror-real", max_retries=0, broker=broker)
    def step(x):
        if x == 3 and not healed.is_set():
            raise ValueError("three")
        return x + 1

    g = group([step.message(i) for i in range(4)], broker=broker).run()
    p = pipeline([step.message(10), step.message(), step.message()], broker=broker).run()
    running = Worker(broker, worker_timeout=50, worker_threads=4)
    running.start()
    try:
        assert p.get_result(block=True, timeout=20_000) == 13
        drain(broker, running)
        rows = Composition.objects.using(using)
        wait_for(lambda: rows.filter(pk=g.id, status="failed", completed=3, failed=1).exists(), what="group failed")
        wait_for(lambda: rows.filter(pk=p.id, status="succeeded", completed=3).exists(), what="pipeline done")
        failed = MessageRecord.objects.using(using).get(composition_id=g.id, status="failed")
        assert failed.position == 3 and "ValueError: three" in failed.traceback
        healed.set()
        report = retry_messages([failed.pk], broker=broker, using=using)
        assert (report.requeued, report.reopened) == ([failed.pk], [g.id])
        assert g.get_results(block=True, timeout=20_000) == [1, 2, 3, 4]
        drain(broker, running)
        wait_for(lambda: rows.filter(pk=g.id, status="succeeded", completed=4, failed=0).exists(), what="reopened")
        assert MessageRecord.objects.using(using).get(pk=failed.pk).status == "succeeded"
        assert MessageRecord.objects.using(using).filter(root_id=p.id, status="succeeded").count() == 3
    finally:
        running.stop()


@pytest.mark.redis
def test_the_mirror_follows_the_redis_broker_and_backend(redis_url):
    from django_actors.brokers.redis import RedisBroker
    from django_actors.results.backends.redis import RedisBackend

    broker = make_broker(broker_cls=RedisBroker, backend=RedisBackend(url=redis_url), url=redis_url)
    try:
        _scenario(broker)
    finally:
        broker.emit_before("process_stop")
        broker.close()


def test_the_mirror_follows_the_database_broker_and_backend(db_alias):
    from django_actors.brokers.database import DatabaseBroker
    from django_actors.results.backends.database import DatabaseBackend

    middleware = [
        Mirror(flush_interval=50, using=db_alias),
        *default_middleware(),
        CurrentMessage(),
        Results(backend=DatabaseBackend(using=db_alias, poll_interval=20), store_results=True),
    ]
    broker = DatabaseBroker(middleware=middleware, using=db_alias, poll_interval=20)
    try:
        _scenario(broker, using=db_alias)
    finally:
        broker.emit_before("process_stop")
        broker.close()


def test_states_only_move_forward_on_every_database(db_alias, broker):
    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"retries": 2})
    worker_side = Recorder(flush_interval=60_000, using=db_alias)
    web_side = Recorder(flush_interval=60_000, using=db_alias)
    worker_side.record(broker, START, message)
    worker_side.record(broker, SUCCESS, message, "done")
    worker_side.flush()
    web_side.record(broker, ENQUEUE, message)
    web_side.flush()
    row = MessageRecord.objects.using(db_alias).get(pk=message.message_id)
    assert (row.status, row.result_preview, row.retries) == ("succeeded", "'done'", 2)
    assert row.started_at is not None and row.finished_at >= row.started_at
    worker_side.stop()
    web_side.stop()


def test_cancelling_a_nested_group_cancels_its_ancestors_but_not_its_siblings(broker):
    @django_actors.actor(queue_name="mirror-nested-cancel")
    def slow(x):
        return x

    left = group([slow.message(1), slow.message(2)])
    right = group([slow.message(3)])
    outer = group([left, right]).run(delay=60_000)
    recorder_of(broker).flush()
    assert Composition.objects.filter(root_id=outer.id).count() == 3
    assert cancel_composition(left.id) is True
    statuses = dict(Composition.objects.values_list("pk", "status"))
    assert statuses == {left.id: "cancelled", outer.id: "cancelled", right.id: "pending"}


def test_the_flusher_counts_finished_messages_per_minute(broker, worker):
    from django_actors.models.mirror import MinuteStat

    @django_actors.actor(queue_name="mirror-minutes", max_retries=0)
    def outcome(ok):
        if not ok:
            raise ValueError("no")

    for ok in (True, True, True, False):
        outcome.send(ok)
    drain(broker, worker)
    totals = [(row.succeeded, row.failed) for row in MinuteStat.objects.all()]
    assert (sum(t[0] for t in totals), sum(t[1] for t in totals)) == (3, 1)
    assert all(row.minute.second == 0 for row in MinuteStat.objects.all())


@pytest.mark.redis
def test_a_worker_process_stopped_with_sigterm_writes_what_it_buffered(redis_url, tmp_path):
    """runworkers with a 10-minute flush interval: the rows still land, at shutdown."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import redis as redis_module
    from django.db import connection as default_connection

    from django_actors.brokers.redis import RedisBroker
    from tests.apps.workerapp import EVENTS

    (tmp_path / "mirror_worker_settings.py").write_text(
        "from tests.subprocess_settings import *  # noqa\n"
        "from django_actors.conf import DEFAULT_MIDDLEWARE\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(default_connection.settings_dict['NAME'])!r}}}}}\n"
        "MIRROR = 'django_actors.middleware.mirror.Mirror'\n"
        "DJANGO_ACTORS = {**DJANGO_ACTORS, 'MIDDLEWARE': [MIRROR, *DEFAULT_MIDDLEWARE],\n"
        "                 'MIRROR': {'ENABLED': True, 'FLUSH_INTERVAL': 600000}}\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DJANGO_ACTORS_TEST_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(repo), env.get("PYTHONPATH", "")])
    stderr_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "django", "runworkers", "--processes", "1", "--settings", "mirror_worker_settings"]
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)  # fmt: skip
    client = redis_module.Redis.from_url(redis_url)
    sender = RedisBroker(url=redis_url, middleware=[])
    try:
        wait_for(lambda: "is ready." in stderr_path.read_text(), timeout=30, what="the worker process")
        sent = [
            sender.enqueue(Message(queue_name="alpha", actor_name="record", args=(f"t{i}",), kwargs={}, options={}))
            for i in range(3)
        ]
        wait_for(lambda: client.llen(EVENTS) >= 3, timeout=20, what="the messages to run")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        sender.close()
    rows = MessageRecord.objects.filter(pk__in=[m.message_id for m in sent])
    assert sorted(rows.values_list("status", flat=True)) == ["succeeded"] * 3
    assert {row.args_preview for row in rows} == {"'t0'", "'t1'", "'t2'"}
    worker_row = WorkerRecord.objects.get()
    assert worker_row.stopped is not None and worker_row.processed == 3 and worker_row.in_flight == 0


def test_a_running_message_shows_as_started_then_finishes_with_the_same_start(broker, worker):
    gate = threading.Event()

    @django_actors.actor(queue_name="mirror-running")
    def waits():
        gate.wait(20)
        return "done"

    recorder = recorder_of(broker)
    recorder.heartbeat_interval = 0.1
    message = waits.send()
    wait_for(lambda: recorder.in_flight == 1, what="the message to start")
    row = wait_for(
        lambda: MessageRecord.objects.filter(pk=message.message_id, status="started").first(),
        what="the flusher to write 'started'",
    )
    assert row.started_ms is not None and row.finished_ms is None and row.worker == recorder.worker_name
    heartbeat = wait_for(lambda: WorkerRecord.objects.filter(in_flight=1).first(), timeout=15, what="in flight")
    assert heartbeat.worker_id == recorder.worker_name
    gate.set()
    drain(broker, worker)
    done = MessageRecord.objects.get(pk=message.message_id)
    assert (done.status, done.result_preview) == ("succeeded", "'done'")
    assert done.started_ms == row.started_ms and done.finished_ms >= done.started_ms
    assert recorder.in_flight == 0


@pytest.mark.parametrize("kind", [ENQUEUE, START, SUCCESS, NACK, "ERROR", "SKIP", "RETRY_ENQUEUE", "DELAYED"])
def test_a_lone_event_is_written_as_the_fold_would_write_it(kind):
    from django_actors import mirror

    options: dict[str, Any] = {"composition": {"id": "g", "pos": 2, "path": ["p", "g"]}}
    if kind == "RETRY_ENQUEUE":
        kind, options = ENQUEUE, {**options, "retries": 2, "traceback": "Traceback: boom"}
    elif kind == "DELAYED":
        kind, options = ENQUEUE, {**options, "eta": int(time.time() * 1000) + 60_000}
    kind = {"ERROR": mirror.ERROR, "SKIP": mirror.SKIP}.get(kind, kind)
    message = Message(queue_name="q", actor_name="a", args=(1, "x"), kwargs={}, options=options)
    event = mirror._event(kind, int(time.time() * 1000), message, "text", 123)
    folded = mirror._Row(event)
    folded.apply(event, "w" if kind != ENQUEUE else "")
    assert mirror._event_values(event, "w", "now") == folded.values("now")

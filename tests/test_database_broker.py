"""The database broker, on SQLite and on PostgreSQL (``db_alias`` is parametrized)."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections, transaction

from django_actors import actor
from django_actors.broker import MessageProxy
from django_actors.brokers.database import DatabaseBroker, run_with_retries
from django_actors.errors import QueueJoinTimeout, QueueNotFound
from django_actors.message import Message, current_millis
from django_actors.models import MessageState, QueuedMessage, WorkerHeartbeat
from django_actors.results import ResultFailure
from django_actors.worker import Worker

from .redis_helpers import wait_for as wait_until

_names = itertools.count()


def db_thread(target: Callable[[], Any]) -> threading.Thread:
    """A thread running ``target`` that closes its database connections when done."""

    def run() -> None:
        try:
            target()
        finally:
            connections.close_all()

    return threading.Thread(target=run)


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


def rows(alias: str, **filters: Any) -> list[QueuedMessage]:
    return list(QueuedMessage.objects.using(alias).filter(**filters).order_by("id"))


def make_broker(alias: str, **options: Any) -> DatabaseBroker:
    options.setdefault("poll_interval", 20)
    options.setdefault("heartbeat_timeout", 2_000)
    return DatabaseBroker(middleware=[], using=alias, **options)


def start_worker(broker: DatabaseBroker, **options: Any) -> Worker:
    options.setdefault("worker_timeout", 100)
    options.setdefault("worker_threads", 4)
    worker = Worker(broker, **options)
    worker.start()
    return worker


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        DatabaseBroker(middleware=[], heartbeat_timeout=0)
    with pytest.raises(ValueError, match="poll_interval"):
        DatabaseBroker(middleware=[], poll_interval="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="using"):
        DatabaseBroker(middleware=[], using="")
    with pytest.raises(ValueError, match="journal_mode"):
        DatabaseBroker(middleware=[], journal_mode="wal; DROP TABLE x")


def test_settings_default_to_the_database_broker_and_backend() -> None:
    from django_actors.conf import build_broker, parse_settings
    from django_actors.results.backends.database import DatabaseBackend

    broker = build_broker(parse_settings({}))
    try:
        assert isinstance(broker, DatabaseBroker)
        assert broker.using == "default"
        assert isinstance(broker.get_results_backend(), DatabaseBackend)
    finally:
        broker.close()


def test_worker_runs_messages_and_stores_results(database_broker: DatabaseBroker, db_alias: str) -> None:
    @actor(broker=database_broker, actor_name=unique("add"), store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    messages = [add.send(i, 1) for i in range(30)]
    worker = start_worker(database_broker)
    try:
        database_broker.join(add.queue_name, timeout=20_000)
        assert [m.get_result(block=True, timeout=5_000) for m in messages] == [i + 1 for i in range(30)]
    finally:
        worker.stop()
    assert rows(db_alias) == []  # acked rows are deleted (no retention)


def test_fetch_claims_in_priority_then_eta_order(database_broker: DatabaseBroker, db_alias: str) -> None:
    queue = unique("prio")

    @actor(broker=database_broker, actor_name=unique("low"), queue_name=queue, priority=10)
    def low(n: int) -> None: ...

    @actor(broker=database_broker, actor_name=unique("high"), queue_name=queue, priority=0)
    def high(n: int) -> None: ...

    sent = [low.send(1), high.send(2), low.send(3), high.send(4)]
    consumer = database_broker.consume(queue, prefetch=10, timeout=50)
    try:
        first = consumer.fetch(3)
        assert [p.message_id for p in first] == [sent[1].message_id, sent[3].message_id, sent[0].message_id]
        assert all(isinstance(p, MessageProxy) and p.message.args for p in first)
        claimed = rows(db_alias, state=MessageState.CLAIMED)
        assert {r.message_id for r in claimed} == {p.message_id for p in first}
        assert {r.claimed_by for r in claimed} == {database_broker.worker_id}
        assert all(r.deliveries == 1 for r in claimed)
        rest = consumer.fetch(10)  # claimed rows are not handed out twice
        assert [p.message_id for p in rest] == [sent[2].message_id]
        assert consumer.fetch(10) == []
        for proxy in first + rest:
            consumer.ack(proxy)
    finally:
        consumer.close()
    assert rows(db_alias) == []


def test_consume_needs_a_declared_queue(database_broker: DatabaseBroker) -> None:
    with pytest.raises(QueueNotFound):
        database_broker.consume("never-declared")


def test_delayed_message_runs_after_its_eta(database_broker: DatabaseBroker, db_alias: str) -> None:
    queue = unique("delayed")

    @actor(broker=database_broker, actor_name=unique("later"), queue_name=queue)
    def later() -> None: ...

    before = current_millis()
    message = later.send_with_options(delay=400)
    assert message.options["eta"] >= before + 400
    [row] = rows(db_alias)
    assert row.eta == message.options["eta"]
    consumer = database_broker.consume(queue, timeout=50)
    try:
        assert consumer.fetch(1) == []  # not due yet
        with pytest.raises(QueueJoinTimeout):
            database_broker.join(queue, timeout=50)  # a delayed message keeps the queue busy
        [proxy] = wait_until(lambda: consumer.fetch(1), timeout=5)
        assert current_millis() >= message.options["eta"]
        assert proxy.message_id == message.message_id
        consumer.ack(proxy)
    finally:
        consumer.close()
    database_broker.join(queue, timeout=1_000)


def test_batched_enqueue_is_one_transaction(database_broker: DatabaseBroker, db_alias: str) -> None:
    queue = unique("batch")

    @actor(broker=database_broker, actor_name=unique("item"), queue_name=queue)
    def item(n: int) -> None: ...

    messages = [item.message(n) for n in range(1_234)]
    database_broker.enqueue_many(messages)
    assert database_broker.pending_count(queue) == 1_234
    stored = QueuedMessage.objects.using(db_alias).order_by("id").values_list("message_id", flat=True)
    assert list(stored) == [m.message_id for m in messages]

    # One message that cannot be encoded: nothing of the batch is enqueued.
    with pytest.raises(TypeError):
        database_broker.enqueue_many([item.message(1), item.message(object())])  # type: ignore[arg-type]
    assert database_broker.pending_count(queue) == 1_234


def test_enqueue_joins_the_callers_transaction(database_broker: DatabaseBroker, db_alias: str) -> None:
    queue = unique("tx")

    @actor(broker=database_broker, actor_name=unique("txn"), queue_name=queue)
    def txn(n: int) -> None: ...

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic(using=db_alias):
        txn.send(1)
        raise Rollback
    assert database_broker.pending_count(queue) == 0
    with transaction.atomic(using=db_alias):
        kept = txn.send(2)
    assert [r.message_id for r in rows(db_alias)] == [kept.message_id]


def test_idle_fetch_wakes_when_a_message_is_sent(db_alias: str, database_broker: DatabaseBroker) -> None:
    broker = make_broker(db_alias, poll_interval=10_000)  # polling alone would take 10 s
    queue = unique("wake")
    broker.declare_queue(queue)
    consumer = broker.consume(queue, timeout=15_000)
    got: list[float] = []
    fetcher = db_thread(lambda: got.extend(time.monotonic() for _ in consumer.fetch(1)))
    try:
        fetcher.start()
        sent_at = time.monotonic()
        broker.enqueue(Message(queue_name=queue, actor_name="nobody", args=(), kwargs={}, options={}))
        fetcher.join(10)
        assert got and got[0] - sent_at < 1.0
    finally:
        consumer.close()
        broker.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "pg"])
def test_listen_notify_wakes_fetchers_for_other_processes(postgres_server: Any) -> None:
    import psycopg

    broker = make_broker("pg", poll_interval=10_000)
    queue = unique("notify")
    broker.declare_queue(queue)
    consumer = broker.consume(queue, timeout=15_000)
    got: list[float] = []
    fetcher = db_thread(lambda: got.extend(time.monotonic() for _ in consumer.fetch(1)))
    try:
        fetcher.start()
        # Another "process": a raw connection inserts a row and notifies, like an enqueue elsewhere.
        db = connections["pg"].settings_dict
        message = Message(queue_name=queue, actor_name="nobody", args=(), kwargs={}, options={})
        params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "dbname": db["NAME"]}
        with psycopg.connect(**params, autocommit=True) as conn:
            wait_until(lambda: fetcher.is_alive() and conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
            ).fetchone()[0])  # fmt: skip
            now = current_millis()
            sent_at = time.monotonic()
            with conn.transaction():
                conn.execute(
                    "INSERT INTO django_actors_message (queue_name, actor_name, message_id, priority, eta, state,"
                    " payload, enqueued_at, updated_at, deliveries, reason)"
                    " VALUES (%s, 'nobody', %s, 0, %s, 'queued', %s, %s, %s, 0, '')",
                    [queue, message.message_id, now, message.encode(), now, now],
                )
                conn.execute("SELECT pg_notify('django_actors', %s)", [queue])
        fetcher.join(10)
        assert got and got[0] - sent_at < 2.0
    finally:
        consumer.close()
        broker.close()


def test_ack_with_retention_keeps_done_rows_until_pruned(db_alias: str, database_broker: DatabaseBroker) -> None:
    broker = make_broker(db_alias, retention=60_000)
    queue = unique("kept")
    broker.declare_queue(queue)
    message = broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}))
    consumer = broker.consume(queue, timeout=50)
    try:
        [proxy] = consumer.fetch(1)
        consumer.ack(proxy)
    finally:
        consumer.close()
    [row] = rows(db_alias)
    assert (row.message_id, row.state, row.claimed_by) == (message.message_id, MessageState.DONE, None)
    broker.join(queue, timeout=1_000)  # done rows are not pending
    assert broker.prune()["done"] == 0  # younger than the retention
    assert broker.prune(older_than=0)["done"] == 1
    assert rows(db_alias) == []
    broker.close()


def test_dead_letters_list_requeue_and_purge(database_broker: DatabaseBroker, db_alias: str) -> None:
    queue = unique("dead")
    failing = threading.Event()
    failing.set()
    ran: list[int] = []

    @actor(broker=database_broker, actor_name=unique("fragile"), queue_name=queue, max_retries=0)
    def fragile(n: int) -> int:
        if failing.is_set():
            raise ValueError(f"kaput {n}")
        ran.append(n)
        return n

    first, second = fragile.send(1), fragile.send(2)
    worker = start_worker(database_broker)
    try:
        database_broker.join(queue, timeout=10_000)
        letters = database_broker.dead_letters(queue)
        assert {d.message_id for d in letters} == {first.message_id, second.message_id}
        by_id = {d.message_id: d for d in letters}
        assert "ValueError: kaput 1" in by_id[first.message_id].reason
        assert by_id[first.message_id].message == first
        assert by_id[first.message_id].deliveries == 1
        assert database_broker.dead_letter_count() == 2
        assert database_broker.dead_letters(queue, message_ids=[second.message_id])[0].message_id == second.message_id
        assert database_broker.dead_letters("other-queue") == []

        failing.clear()
        assert database_broker.requeue_dead_letters([first.message_id]) == 1
        database_broker.join(queue, timeout=10_000)
        assert ran == [1]
        assert [d.message_id for d in database_broker.dead_letters()] == [second.message_id]

        assert database_broker.purge_dead_letters() == 1
        assert database_broker.dead_letters() == []
        assert rows(db_alias) == []
    finally:
        worker.stop()


def test_dead_letters_expire_after_their_ttl(db_alias: str, database_broker: DatabaseBroker) -> None:
    broker = make_broker(db_alias, dead_message_ttl=300)
    queue = unique("ttl")
    broker.declare_queue(queue)
    broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}))
    consumer = broker.consume(queue, timeout=50)
    try:
        [proxy] = consumer.fetch(1)
        proxy.fail("no good")
        consumer.nack(proxy)
    finally:
        consumer.close()
    assert [d.reason for d in broker.dead_letters()] == ["no good"]
    wait_until(lambda: not broker.dead_letters(), timeout=5)  # expired: no longer listed
    assert broker.requeue_dead_letters() == 0  # nor requeued
    assert broker.prune()["dead"] == 1
    assert rows(db_alias) == []
    broker.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "undecodable message: payload is not valid JSON"),
        (b'{"queue_name": "q"}', "undecodable message: message is missing field(s)"),
        (b"[1, 2, 3]", "undecodable message: payload is JSON but not an object"),
    ],
)
def test_undecodable_rows_are_dead_lettered_with_their_reason(
    database_broker: DatabaseBroker, db_alias: str, payload: bytes, reason: str
) -> None:
    queue = unique("garbage")

    @actor(broker=database_broker, actor_name=unique("fine"), queue_name=queue)
    def fine() -> None: ...

    now = current_millis()
    message_id = unique("garbage-id")
    QueuedMessage.objects.using(db_alias).create(
        queue_name=queue, message_id=message_id, eta=now, payload=payload, enqueued_at=now, updated_at=now
    )
    good = fine.send()
    worker = start_worker(database_broker)
    try:
        database_broker.join(queue, timeout=10_000)
    finally:
        worker.stop()
    [letter] = database_broker.dead_letters(queue)
    assert letter.message_id == message_id
    assert letter.reason.startswith(reason)
    assert letter.message is None
    assert good.message_id not in {d.message_id for d in database_broker.dead_letters()}
    # A caller waiting on that message's result is told it failed, not left hanging.
    with pytest.raises(ResultFailure, match=r"undecodable|JSON|missing"):
        database_broker.get_results_backend().get_result(message_id, block=True, timeout=2_000)


def test_oversized_payload_at_receive_is_dead_lettered(database_broker: DatabaseBroker) -> None:
    queue = unique("big")

    @actor(broker=database_broker, actor_name=unique("big"), queue_name=queue)
    def big(text: str) -> None: ...

    message = big.send("x" * 5_000)  # sent under a larger limit...
    database_broker.max_message_size = 1_000  # ...received under a smaller one
    worker = start_worker(database_broker)
    try:
        database_broker.join(queue, timeout=10_000)
    finally:
        worker.stop()
    [letter] = database_broker.dead_letters(queue)
    assert letter.message_id == message.message_id
    assert "over max_message_size (1000 bytes)" in letter.reason


def test_stopping_a_worker_hands_back_prefetched_messages(database_broker: DatabaseBroker, db_alias: str) -> None:
    queue = unique("handback")
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    @actor(broker=database_broker, actor_name=unique("slow"), queue_name=queue)
    def slow(n: int) -> None:
        started.set()
        release.wait(10)
        ran.append(n)

    for n in range(4):
        slow.send(n)
    worker = start_worker(database_broker, worker_threads=1, prefetch=4)
    wait_until(started.is_set)
    wait_until(lambda: len(rows(db_alias, state=MessageState.CLAIMED)) == 4)
    stopper = db_thread(lambda: worker.stop(timeout=10_000))
    stopper.start()
    wait_until(lambda: not any(c._running for c in worker.consumers.values()))
    release.set()
    stopper.join(15)
    assert ran == [0]
    left = rows(db_alias)
    assert len(left) == 3
    assert all(r.state == MessageState.QUEUED and r.claimed_by is None for r in left)
    worker = start_worker(database_broker)
    try:
        database_broker.join(queue, timeout=10_000)
    finally:
        worker.stop()
    assert sorted(ran) == [0, 1, 2, 3]


def test_join_times_out_while_a_message_is_in_flight(database_broker: DatabaseBroker) -> None:
    queue = unique("busy")
    release = threading.Event()

    @actor(broker=database_broker, actor_name=unique("block"), queue_name=queue)
    def block() -> None:
        release.wait(10)

    block.send()
    worker = start_worker(database_broker)
    try:
        with pytest.raises(QueueJoinTimeout):
            database_broker.join(queue, timeout=200)
        release.set()
        database_broker.join(queue, timeout=10_000)
    finally:
        release.set()
        worker.stop()


def test_flush_and_flush_all(database_broker: DatabaseBroker, db_alias: str) -> None:
    a, b = unique("qa"), unique("qb")
    for queue in (a, b):
        database_broker.declare_queue(queue)
        database_broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}))
        database_broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}), delay=60_000)
    consumer = database_broker.consume(a, timeout=50)
    try:
        [proxy] = consumer.fetch(1)
        proxy.fail("bad")
        consumer.nack(proxy)
    finally:
        consumer.close()
    database_broker.flush(a)
    assert database_broker.pending_count(a) == 0
    assert database_broker.pending_count(b) == 2
    assert database_broker.dead_letter_count(a) == 1  # flush keeps dead letters
    database_broker.flush_all()
    assert rows(db_alias) == []


def test_stats_and_workers(db_alias: str, database_broker: DatabaseBroker) -> None:
    queue = unique("stats")
    database_broker.declare_queue(queue)
    new = [Message(queue_name=queue, actor_name="x", args=(n,), kwargs={}, options={}) for n in range(4)]
    database_broker.enqueue_many(new)
    database_broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}), delay=60_000)
    consumer = database_broker.consume(queue, timeout=50)
    try:
        claimed = consumer.fetch(2)
        claimed[0].fail("bad")
        consumer.nack(claimed[0])
        stats = database_broker.stats(queue)
        assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (2, 1, 1, 1)
        workers = database_broker.workers()
        assert database_broker.worker_id in workers
        assert abs(workers[database_broker.worker_id] - current_millis()) < 60_000
    finally:
        consumer.close()
    assert database_broker.worker_id not in database_broker.workers()


def test_heartbeat_row_lives_while_consuming(db_alias: str, database_broker: DatabaseBroker) -> None:
    broker = make_broker(db_alias, heartbeat_timeout=400)
    broker.declare_queue("beats")
    first = broker.consume("beats", timeout=10)
    second = broker.consume("beats", timeout=10)
    [beat] = WorkerHeartbeat.objects.using(db_alias).filter(worker_id=broker.worker_id)
    beats = WorkerHeartbeat.objects.using(db_alias)
    wait_until(lambda: beats.get(worker_id=broker.worker_id).last_seen > beat.last_seen)
    first.close()
    assert WorkerHeartbeat.objects.using(db_alias).filter(worker_id=broker.worker_id).exists()
    second.close()  # the last consumer gone: the worker is gone
    assert not WorkerHeartbeat.objects.using(db_alias).filter(worker_id=broker.worker_id).exists()
    broker.close()


def test_reaper_releases_claims_of_a_silent_worker(db_alias: str, database_broker: DatabaseBroker) -> None:
    queue = unique("reap")
    frozen = make_broker(db_alias, heartbeat_timeout=300)
    rescuer = make_broker(db_alias, heartbeat_timeout=300)
    for broker in (frozen, rescuer):
        broker.declare_queue(queue)
    sent = frozen.enqueue_many(
        [Message(queue_name=queue, actor_name="x", args=(n,), kwargs={}, options={}) for n in range(3)]
    )
    lost = frozen.consume(queue, timeout=50)
    claimed = lost.fetch(3)
    assert len(claimed) == 3
    assert frozen._heartbeat is not None
    frozen._heartbeat.stop()  # the process froze (or died): no more heartbeats, claims stay
    claimed_at = time.monotonic()
    consumer = rescuer.consume(queue, timeout=50)
    try:
        got: list[MessageProxy] = []
        wait_until(lambda: got.extend(consumer.fetch(3)) or len(got) == 3, timeout=10)
        assert time.monotonic() - claimed_at >= 0.3  # not before the heartbeat lapsed
        assert sorted(p.message_id for p in got) == sorted(m.message_id for m in sent)
        assert {r.deliveries for r in rows(db_alias)} == {2}
        assert {r.claimed_by for r in rows(db_alias)} == {rescuer.worker_id}
        lost.ack(claimed[0])  # a late ack of the first delivery still settles the message
        for proxy in got:
            if proxy.tag != claimed[0].tag:
                consumer.ack(proxy)
        assert rows(db_alias) == []
    finally:
        consumer.close()
        rescuer.close()
        frozen.close()


@pytest.mark.parametrize("strategy", [None, "generic"])
def test_concurrent_fetchers_never_share_a_message(
    db_alias: str, database_broker: DatabaseBroker, strategy: str | None
) -> None:
    queue = unique("race")
    total = 300
    brokers = [make_broker(db_alias) for _ in range(4)]
    for broker in brokers:
        broker.declare_queue(queue)
        broker.claim_strategy = strategy
    brokers[0].enqueue_many(
        [Message(queue_name=queue, actor_name="x", args=(n,), kwargs={}, options={}) for n in range(total)]
    )
    fetched: list[list[str]] = [[] for _ in brokers]
    errors: list[BaseException] = []

    def drain(index: int) -> None:
        consumer = brokers[index].consume(queue, timeout=50)
        try:
            while sum(len(f) for f in fetched) < total:
                batch = consumer.fetch(7)
                fetched[index].extend(p.message_id for p in batch)
                for proxy in batch:
                    consumer.ack(proxy)
        except BaseException as exc:
            errors.append(exc)
        finally:
            consumer.close()

    threads = [db_thread(lambda i=i: drain(i)) for i in range(len(brokers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for broker in brokers:
        broker.close()
    assert not errors
    everything = [m for f in fetched for m in f]
    assert len(everything) == len(set(everything)) == total
    assert sum(1 for f in fetched if f) >= 2  # they really competed
    assert rows(db_alias) == []


@pytest.mark.django_db(transaction=True)
def test_sqlite_lock_is_retried_with_backoff() -> None:
    connection = connections["default"]
    path = connection.settings_dict["NAME"]
    queue = unique("locked")
    database_broker = make_broker("default")
    database_broker.declare_queue(queue)
    database_broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}))
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 20")  # fail fast on a lock: our retries take over
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE django_actors_message SET priority = priority")
    releaser = threading.Timer(0.5, holder.execute, args=("COMMIT",))
    started = time.monotonic()
    releaser.start()
    try:
        database_broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}))
        assert time.monotonic() - started >= 0.4  # it waited for the lock instead of failing
        assert database_broker.pending_count(queue) == 2
    finally:
        releaser.join()
        holder.close()
        database_broker.close()


@pytest.mark.django_db(transaction=True)
def test_lock_errors_inside_a_callers_transaction_are_not_retried() -> None:
    from django.db import OperationalError

    calls = []

    def locked() -> None:
        calls.append(1)
        raise OperationalError("database is locked")

    with pytest.raises(OperationalError), transaction.atomic():
        run_with_retries("default", locked)
    assert calls == [1]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "pg"])
def test_threads_close_their_postgres_connections(postgres_server: Any) -> None:
    from django_actors.results.backends.database import DatabaseBackend
    from django_actors.results.middleware import Results

    backend = DatabaseBackend(using="pg")
    broker = DatabaseBroker(middleware=[Results(backend=backend, store_results=True)], using="pg", poll_interval=20)
    queue = unique("conns")

    @actor(broker=broker, actor_name=unique("touch"), queue_name=queue)
    def touch(n: int) -> int:
        return n

    def others() -> int:
        with connections["pg"].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])

    baseline = others()
    for n in range(20):
        touch.send(n)
    worker = start_worker(broker)
    try:
        broker.join(queue, timeout=10_000)
        assert others() > baseline  # worker, consumer, heartbeat and listener threads are connected
    finally:
        worker.stop()
        broker.close()
    wait_until(lambda: others() == baseline, timeout=10)


def test_prune_actors_command(db_alias: str, database_broker: DatabaseBroker, database_backend: Any) -> None:
    queue = unique("prune")
    broker = make_broker(db_alias, retention=3_600_000)
    broker.declare_queue(queue)
    broker.enqueue_many([Message(queue_name=queue, actor_name="x", args=(n,), kwargs={}, options={}) for n in range(3)])
    consumer = broker.consume(queue, timeout=50)
    try:
        done, dead = consumer.fetch(2)
        consumer.ack(done)
        dead.fail("bad")
        consumer.nack(dead)
    finally:
        consumer.close()
    database_backend._store_many({"gone": 1}, 1)
    database_backend._store_many({"kept": 2}, 60_000)
    wait_until(lambda: database_backend._get("gone") is None)

    from io import StringIO

    out = StringIO()
    call_command("prune_actors", "--older-than", "0", "--database", db_alias, "--keep-dead-letters", stdout=out)
    assert "Deleted 1 done message(s), 0 dead letter(s)" in out.getvalue()
    assert "1 expired result(s)" in out.getvalue()
    assert sorted(r.state for r in rows(db_alias)) == [MessageState.DEAD, MessageState.QUEUED]
    call_command("prune_actors", "--older-than", "0", "--database", db_alias, stdout=out)
    assert [r.state for r in rows(db_alias)] == [MessageState.QUEUED]  # queued messages are never pruned
    assert database_backend._get("kept") == 2
    broker.close()


@pytest.mark.django_db(transaction=True)
def test_prune_actors_rejects_bad_arguments() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="older-than"):
        call_command("prune_actors", "--older-than", "-5")
    with pytest.raises(CommandError, match="Unknown database alias"):
        call_command("prune_actors", "--older-than", "5", "--database", "nope")


def test_settling_after_the_consumer_closed_still_works(db_alias: str, database_broker: DatabaseBroker) -> None:
    broker = make_broker(db_alias)
    queue = unique("late")
    broker.declare_queue(queue)
    broker.enqueue_many([Message(queue_name=queue, actor_name="x", args=(n,), kwargs={}, options={}) for n in range(2)])
    consumer = broker.consume(queue, timeout=50)
    first, second = consumer.fetch(2)
    consumer.close()  # e.g. a worker thread finishing after the worker stopped
    consumer.ack(first)
    second.fail("late failure")
    consumer.nack(second)
    assert [(r.message_id, r.state) for r in rows(db_alias)] == [(second.message_id, MessageState.DEAD)]
    broker.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "pg"])
def test_worker_recovers_when_postgres_drops_its_connections(postgres_server: Any) -> None:
    broker = DatabaseBroker(middleware=[], using="pg", poll_interval=20, heartbeat_timeout=2_000)
    queue = unique("dropped")
    seen: list[int] = []

    @actor(broker=broker, actor_name=unique("note"), queue_name=queue)
    def note(n: int) -> None:
        seen.append(n)

    for n in range(10):
        note.send(n)
    worker = start_worker(broker)
    try:
        broker.join(queue, timeout=10_000)
        with connections["pg"].cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] >= 2  # at least the consumer's and the settler's
        for n in range(10, 20):
            note.send(n)
        broker.join(queue, timeout=20_000)
    finally:
        worker.stop()
        broker.close()
    assert sorted(seen) == list(range(20))


def test_failed_acks_are_written_again_by_a_later_fetch(db_alias: str, database_broker: DatabaseBroker) -> None:
    from django.db import DatabaseError

    broker = make_broker(db_alias)
    queue = unique("unsettled")
    broker.declare_queue(queue)
    broker.enqueue(Message(queue_name=queue, actor_name="x", args=(), kwargs={}, options={}))
    consumer = broker.consume(queue, timeout=50)
    try:
        [proxy] = consumer.fetch(1)
        with connections[db_alias].cursor() as cursor:
            cursor.execute("ALTER TABLE django_actors_message RENAME TO django_actors_message_away")
        try:
            with pytest.raises(DatabaseError):
                consumer.ack(proxy)  # the table is gone: the ack cannot be written
        finally:
            with connections[db_alias].cursor() as cursor:
                cursor.execute("ALTER TABLE django_actors_message_away RENAME TO django_actors_message")
        assert [r.state for r in rows(db_alias)] == [MessageState.CLAIMED]
        assert consumer.fetch(1) == []  # the next fetch writes the ack first
        assert rows(db_alias) == []
    finally:
        consumer.close()
        broker.close()


def test_join_fail_fast_raises_a_failure_from_before_the_join_once(database_broker: DatabaseBroker) -> None:
    @actor(broker=database_broker, actor_name=unique("fails_early"), queue_name=unique("early"), max_retries=0)
    def fails_early() -> None:
        raise KeyError("early")

    fails_early.send()
    worker = start_worker(database_broker)
    try:
        wait_until(lambda: database_broker.dead_letters(fails_early.queue_name))
        with pytest.raises(KeyError, match="early"):
            database_broker.join(fails_early.queue_name, timeout=10_000, fail_fast=True)
        # Reported once: the next join has nothing new to report.
        database_broker.join(fails_early.queue_name, timeout=10_000, fail_fast=True)
    finally:
        worker.stop()


def test_join_fail_fast_ignores_failures_in_other_queues(database_broker: DatabaseBroker) -> None:
    other, mine = unique("other"), unique("mine")

    @actor(broker=database_broker, actor_name=unique("fails_elsewhere"), queue_name=other, max_retries=0)
    def fails_elsewhere() -> None:
        raise ValueError("elsewhere")

    @actor(broker=database_broker, actor_name=unique("fine"), queue_name=mine)
    def fine() -> None:
        pass

    fails_elsewhere.send()
    worker = start_worker(database_broker)
    try:
        database_broker.join(other, timeout=10_000)
        fine.send()
        database_broker.join(mine, timeout=10_000, fail_fast=True)
        with pytest.raises(ValueError, match="elsewhere"):
            database_broker.join(other, timeout=10_000, fail_fast=True)
    finally:
        worker.stop()

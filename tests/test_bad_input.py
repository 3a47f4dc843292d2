"""Bad input never stops a worker, and is never lost silently.

On every broker (stub, Redis, the database broker on SQLite and PostgreSQL):

- payloads written straight into the queue (``put_raw``, the Redis
  structures, the broker's table): garbage bytes, empty, truncated JSON,
  JSON that is not an object, invalid UTF-8, JSON nested 50,000 deep,
  messages missing fields or with fields of the wrong type, bad options, a
  bad timestamp, a message for an unknown actor, a message over the size
  limit: each is dead-lettered with its reason, the messages after it run,
  the worker's threads are alive, and a caller waiting on one whose id is
  known gets ``ResultFailure`` at once;
- at send time: a message over ``max_message_size``, arguments that cannot
  be encoded, invalid queue names: a clear error and nothing enqueued;
- a results backend that is down (a RedisBackend on a closed port): sending
  works; the worker keeps going; the message that needs the backend is not
  acked while it is down (it is handed back, with a growing pause, and runs
  again) and its result is stored once the backend is back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_actors import Message, actor, group, pipeline
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.errors import ConnectionClosed, MessageTooLarge
from django_actors.message import current_millis
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend
from django_actors.results.errors import ResultFailure
from django_actors.worker import Worker

from .redis_helpers import RedisProcess, free_port, wait_for

QUEUE = "bad-input"
#: The brokers' max_message_size in these tests.
LIMIT = 4096

BROKERS = [
    pytest.param("stub", id="stub"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("sqlite", id="sqlite", marks=pytest.mark.django_db(transaction=True)),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[pytest.mark.postgres, pytest.mark.django_db(transaction=True, databases=["default", "pg"])],
    ),
]


class Bench:
    """A broker of one kind with a results backend, two actors and a worker."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, *, results: Any = None) -> None:
        self.kind = kind
        self.results = results
        self.alias = {"sqlite": "default", "postgres": "pg"}.get(kind)
        self.ran: list[Any] = []
        self.worker: Worker | None = None
        if kind == "stub":
            self.backend: Any = StubBackend()
            self.broker: Any = StubBroker(middleware=self._middleware(), max_message_size=LIMIT)
        elif kind == "redis":
            from django_actors.brokers.redis import RedisBroker
            from django_actors.results.backends.redis import RedisBackend

            url = request.getfixturevalue("redis_url")
            self.redis = redis.Redis.from_url(url)
            self.backend = RedisBackend(url=url)
            self.broker = RedisBroker(url=url, middleware=self._middleware(), max_message_size=LIMIT)
        else:
            from django_actors.brokers.database import DatabaseBroker
            from django_actors.results.backends.database import DatabaseBackend

            if kind == "postgres":
                request.getfixturevalue("postgres_server")
            assert self.alias is not None
            self.backend = DatabaseBackend(using=self.alias, poll_interval=20)
            self.broker = DatabaseBroker(
                middleware=self._middleware(), using=self.alias, poll_interval=20, max_message_size=LIMIT
            )
        ran = self.ran

        @actor(broker=self.broker, queue_name=QUEUE, actor_name="ok", max_retries=0)
        def ok(n: Any) -> Any:
            ran.append(n)
            return n

        @actor(broker=self.broker, queue_name=QUEUE, actor_name="stored", max_retries=0, store_results=True)
        def stored(n: Any) -> Any:
            ran.append(n)
            return n

        self.ok, self.stored = ok, stored

    def _middleware(self) -> list[Any]:
        return [*default_middleware(), Results(backend=self.results or self.backend)]

    def start(self) -> Worker:
        self.worker = Worker(self.broker, worker_threads=2, worker_timeout=50)
        self.worker.start()
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=5_000)
        self.broker.close()
        self.backend.close()

    def put_raw(self, data: bytes, message_id: str | None = None) -> None:
        """Write a payload straight into the queue, as another producer (or an attacker) could."""
        if self.kind in ("stub", "redis"):
            self.broker.put_raw(QUEUE, data)
            return
        from django_actors.models import MessageState, QueuedMessage

        self.broker.declare_queue(QUEUE)
        now = current_millis()
        QueuedMessage.objects.using(self.alias).create(
            queue_name=QUEUE,
            actor_name="",
            message_id=message_id or str(uuid.uuid4()),
            eta=now,
            state=MessageState.QUEUED,
            payload=data,
            enqueued_at=now,
            updated_at=now,
        )

    def pending(self) -> int:
        """Messages waiting in the queue (ready or delayed)."""
        if self.kind == "stub":
            return len(self.broker.queues.get(QUEUE, ()))
        if self.kind == "redis":
            stats = self.broker.stats(QUEUE)
            return int(stats.ready + stats.delayed)
        return int(self.broker.pending_count(QUEUE))

    def held(self) -> int:
        """Messages the broker still holds for the queue: ready, delayed or in flight."""
        if self.kind == "stub":
            return int(self.broker.queues[QUEUE].unacked) + self.pending()
        stats = self.broker.stats(QUEUE)
        return int(stats.ready + stats.delayed + stats.in_flight)

    def dead(self) -> list[tuple[str, str]]:
        """(message_id, reason) of every dead letter."""
        if self.kind == "stub":
            return [(p.message_id, p.fail_reason or "") for p in self.broker.dead_letters]
        if self.kind == "redis":
            return [(d.message_id, d.reason) for d in self.broker.dead_letters(QUEUE, limit=1000)]
        return [(d.message_id, d.reason) for d in self.broker.dead_letters(QUEUE, limit=None)]

    def join(self) -> None:
        # Failures are what these tests look at: wait on them (the stub's join raises them by default).
        options = {"fail_fast": False} if self.kind == "stub" else {}
        self.broker.join(QUEUE, timeout=20_000, **options)


@pytest.fixture(params=BROKERS)
def bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    bench = Bench(request.param, request)
    yield bench
    bench.close()


def message_dict(actor_name: str = "ok", **fields: Any) -> dict[str, Any]:
    """A valid message in its dict form, with ``fields`` replaced."""
    data = Message(queue_name=QUEUE, actor_name=actor_name, args=(1,), kwargs={}, options={}).asdict()
    data["args"] = list(data["args"])
    data.update(fields)
    return data


def encoded(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def bad_payloads() -> list[tuple[str, bytes, str | None, str]]:
    """(name, payload, message id when it carries one, what the dead letter's reason says).

    Payloads without an id are matched to dead letters in this order, so the
    more specific reasons come first."""
    good = encoded(message_dict())
    with_id = []
    for name, data, reason in [
        ("missing fields", {"message_id": "", "actor_name": "ok"}, "missing field"),
        ("args not a list", message_dict(args="x"), "args must be a list"),
        ("kwargs not an object", message_dict(kwargs=[1]), "kwargs must be an object"),
        ("empty actor name", message_dict(actor_name=""), "actor_name must be a non-empty string"),
        ("retries not a number", message_dict(options={"retries": "many"}), "option 'retries'"),
        ("broken composition", message_dict(options={"composition": {"id": 5}}), "option 'composition'"),
        ("callback not a name", message_dict(options={"on_success": ["x"]}), "option 'on_success'"),
        ("timestamp not a number", message_dict(message_timestamp="yesterday"), "message_timestamp"),
        ("timestamp out of range", message_dict(message_timestamp=10**30), "message_timestamp"),
        ("unknown actor", message_dict(actor_name="no_such_actor"), "not declared"),
        ("over the size limit", message_dict(args=["x" * LIMIT]), f"{LIMIT} bytes"),
    ]:
        data["message_id"] = f"bad-{uuid.uuid4()}"
        with_id.append((name, encoded(data), data["message_id"], reason))
    return [
        ("garbage bytes", b"\x00\xff\xfe garbage \x80", None, "codec can't decode"),
        ("empty payload", b"", None, "Expecting value: line 1 column 1 (char 0)"),
        ("JSON array", b"[1, 2, 3]", None, "not an object"),
        ("JSON null", b"null", None, "not an object"),
        ("JSON string", b'"queue_name"', None, "not an object"),
        ("invalid UTF-8", b'{"actor_name": "\xff\xfe"}', None, "codec can't decode"),
        ("nested 50,000 deep", b"[" * 50_000 + b"]" * 50_000, None, "recursion"),
        ("truncated JSON", good[: len(good) // 2], None, "not valid JSON"),  # last: the least specific
        *with_id,
    ]


def test_bad_payloads_are_dead_lettered_with_their_reason_and_the_worker_goes_on(bench: Bench) -> None:
    payloads = bad_payloads()
    for index, (_, data, message_id, _) in enumerate(payloads):
        bench.put_raw(data, message_id)
        bench.ok.send(index)  # a good message after each bad one
    worker = bench.start()
    wait_for(lambda: len(bench.ran) >= len(payloads), 20, what="the good messages")
    bench.join()

    assert sorted(bench.ran) == list(range(len(payloads)))
    assert all(thread.is_alive() for thread in worker.workers)
    assert all(thread.is_alive() for thread in worker.consumers.values())
    dead = bench.dead()
    assert len(dead) == len(payloads), dead
    reasons = dict(dead)
    anonymous = [reason for message_id, reason in dead if not message_id.startswith("bad-")]
    assert all(reason.startswith("undecodable message: ") for reason in anonymous), anonymous
    for name, _, message_id, fragment in payloads:
        if message_id is not None:
            assert fragment.lower() in reasons[message_id].lower(), (name, reasons[message_id])
        else:
            found = next((reason for reason in anonymous if fragment.lower() in reason.lower()), None)
            assert found is not None, (name, fragment, anonymous)
            anonymous.remove(found)
    # Whoever waits on a dead-lettered message whose id is known is told at once.
    for name, _, message_id, _ in payloads:
        if message_id is not None:
            start = time.monotonic()
            with pytest.raises(ResultFailure):
                bench.backend.get_result(message_id, block=True, timeout=5_000)
            assert time.monotonic() - start < 1.0, name


def test_a_caller_waiting_on_a_message_for_an_unknown_actor_gets_result_failure(bench: Bench) -> None:
    message = Message(queue_name=QUEUE, actor_name="vanished", args=(), kwargs={}, options={})
    bench.broker.enqueue(message)  # sent by a process that knows the actor; this one does not
    bench.start()
    with pytest.raises(ResultFailure, match="vanished"):
        message.get_result(backend=bench.backend, block=True, timeout=10_000)
    bench.join()
    assert [message_id for message_id, _ in bench.dead()] == [message.message_id]


def test_too_large_messages_fail_at_send_and_nothing_is_enqueued(bench: Bench) -> None:
    with pytest.raises(MessageTooLarge, match=f"over the limit of {LIMIT} bytes"):
        bench.ok.send("x" * LIMIT)
    with pytest.raises(MessageTooLarge):
        bench.broker.enqueue_many([bench.ok.message(1), bench.ok.message("x" * LIMIT)])
    with pytest.raises(MessageTooLarge):
        group([bench.stored.message(1), bench.stored.message("x" * LIMIT)], broker=bench.broker).run()
    assert bench.pending() == 0
    bench.ok.send("x" * (LIMIT // 2))  # under the limit: fine
    assert bench.pending() == 1


class Opaque:
    pass


def circular() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def deeply_nested() -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((Opaque(),), {}, "positional argument 0 (Opaque)"),
        ((1, {1, 2}), {}, "positional argument 1 (set)"),
        ((), {"data": b"\x00bytes"}, "keyword argument 'data' (bytes)"),
        ((circular(),), {}, "positional argument 0 (list)"),
        ((), {"key": {object(): 1}}, "keyword argument 'key' (dict)"),
    ],
    ids=["object", "set", "bytes", "circular", "non-string-key"],
)
def test_arguments_that_cannot_be_encoded_fail_at_send_with_nothing_enqueued(bench, args, kwargs, named):
    with pytest.raises(TypeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        bench.ok.send(*args, **kwargs)
    with pytest.raises(TypeError):  # one bad message in a batch: none of the batch is sent
        bench.broker.enqueue_many([bench.ok.message(1), bench.ok.message(*args, **kwargs)])
    with pytest.raises(TypeError):
        pipeline([bench.stored.message(1), bench.stored.message(*args, **kwargs)], broker=bench.broker).run()
    assert bench.pending() == 0


def test_arguments_nested_too_deeply_fail_at_send_with_nothing_enqueued(bench: Bench) -> None:
    with pytest.raises(RecursionError, match="maximum recursion depth exceeded while encoding"):
        bench.ok.send(deeply_nested())
    with pytest.raises(RecursionError):
        bench.broker.enqueue_many([bench.ok.message(1), bench.ok.message(deeply_nested())])
    assert bench.pending() == 0


INVALID_QUEUE_NAMES = [
    "",
    "has space",
    "trailing-newline\n",
    "a:b",
    "x" * 129,
    "queue/name",
    "nul\x00",
    "ünicode",
    None,
    5,
]


@pytest.mark.parametrize("name", INVALID_QUEUE_NAMES, ids=repr)
def test_invalid_queue_names_are_refused_with_a_clear_error(bench: Bench, name: Any) -> None:
    with pytest.raises(ValueError, match="Invalid queue name"):
        actor(broker=bench.broker, queue_name=name)(lambda: None)
    with pytest.raises(ValueError, match="Invalid queue name"):
        bench.broker.declare_queue(name)
    with pytest.raises(ValueError, match="Invalid queue name"):
        Message(queue_name=name, actor_name="ok", args=(), kwargs={}, options={}).send(broker=bench.broker)
    assert name not in bench.broker.get_declared_queues()
    if bench.kind == "redis":
        with pytest.raises(ValueError, match="Invalid queue name"):
            bench.broker.put_raw(name, b"{}")


# The Redis structures and the table, written directly -----------------------------------


@pytest.mark.redis
def test_garbage_written_into_the_redis_structures_is_dead_lettered(redis_url: str) -> None:
    from django_actors.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url, middleware=default_middleware())
    ran: list[int] = []

    @actor(broker=broker, queue_name=QUEUE, actor_name="ok")
    def ok(n: int) -> None:
        ran.append(n)

    client = redis.Redis.from_url(redis_url)
    ready, msgs = broker._queue_key(QUEUE), broker._queue_key(QUEUE, "msgs")
    ok.send(1)
    # A member in the ready set with a garbage payload, and one with no payload at all.
    client.hset(msgs, "9999999999999999:0", b"\xde\xad\xbe\xef")
    client.zadd(ready, {"9999999999999999:0": 0, "9999999999999998:0": 0})
    ok.send(2)
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: sorted(ran) == [1, 2], 10, what="the good messages")
        broker.join(QUEUE, timeout=10_000)
        # A list pushed onto the queue's key (another library's habit) is adopted as messages.
        client.delete(ready)
        client.lpush(ready, b"not a message", ok.message(3).encode())
        wait_for(lambda: sorted(ran) == [1, 2, 3], 10, what="the list adopted")
        ok.send(4)
        wait_for(lambda: sorted(ran) == [1, 2, 3, 4], 10, what="the message after the list")
        broker.join(QUEUE, timeout=10_000)
    finally:
        worker.stop()
    reasons = [letter.reason for letter in broker.dead_letters(QUEUE)]
    assert len(reasons) == 2, reasons
    assert all("undecodable" in reason for reason in reasons)
    assert broker.stats(QUEUE).in_flight == 0
    broker.close()


# A results backend that is down ------------------------------------------------------------


@pytest.fixture
def down_backend(tmp_path) -> Iterator[tuple[Any, RedisProcess]]:
    """A RedisBackend on a closed port, and the server that can be started there later."""
    from django_actors.results.backends.redis import RedisBackend

    server = RedisProcess(tmp_path, port=free_port())  # not started yet
    backend = RedisBackend(url=server.url, socket_connect_timeout=0.5)
    yield backend, server
    server.stop()
    backend.close()


@pytest.fixture(params=BROKERS)
def bench_without_results(request: pytest.FixtureRequest, down_backend: Any) -> Iterator[Bench]:
    bench = Bench(request.param, request, results=down_backend[0])
    yield bench
    bench.close()


def test_a_results_backend_that_is_down(bench_without_results: Bench, down_backend: Any) -> None:
    """Decided behaviour: sending does not touch the results backend, so it
    works; running a composition needs it and fails at ``run()`` with
    ``ConnectionClosed``, nothing sent; a caller asking for a result gets
    ``ConnectionClosed``, not a hang. In the worker, a message whose result
    cannot be stored is not acked: it is handed back (after a pause that
    grows while the backend stays down) and runs again, while the other
    messages go on; once the backend is back its result is stored."""
    bench, (backend, server) = bench_without_results, down_backend
    needs_results = bench.stored.send("needs-results")  # sending works
    for n in range(20):
        bench.ok.send(f"plain-{n}")
    with pytest.raises(ConnectionClosed):
        pipeline([bench.stored.message("a"), bench.stored.message()], broker=bench.broker).run()
    assert bench.pending() == 21  # the pipeline sent nothing
    with pytest.raises(ConnectionClosed):
        needs_results.get_result(backend=backend, block=True, timeout=60_000)

    bench.start()
    wait_for(lambda: sum(str(tag).startswith("plain") for tag in bench.ran) == 20, 10, what="the other messages")
    time.sleep(1.0)  # the outage goes on: the message must neither be acked nor spin
    attempts = bench.ran.count("needs-results")
    assert 1 <= attempts <= 8, f"{attempts} runs in a second: the worker spins on the message"
    assert bench.dead() == []
    assert bench.held() == 1  # still in the broker, ready or in flight
    server.start()
    assert needs_results.get_result(backend=backend, block=True, timeout=15_000) == "needs-results"
    bench.join()
    assert bench.held() == 0


# Settings ----------------------------------------------------------------------------------


def test_max_message_size_comes_from_settings_with_a_sane_default() -> None:
    from django_actors.conf import build_broker, get_settings

    assert get_settings().max_message_size is None
    assert build_broker().max_message_size == 4 * 1024 * 1024
    config = {"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "RESULTS": None, "MAX_MESSAGE_SIZE": 1000}
    with override_settings(DJANGO_ACTORS=config):
        broker = build_broker()
        assert broker.max_message_size == 1000
        with pytest.raises(MessageTooLarge):
            broker.enqueue(Message(queue_name=QUEUE, actor_name="ok", args=("x" * 1000,), kwargs={}, options={}))
    for bad in (0, -1, "1MB", True, 1.5):
        with (
            override_settings(DJANGO_ACTORS={"MAX_MESSAGE_SIZE": bad}),
            pytest.raises(ImproperlyConfigured, match="MAX_MESSAGE_SIZE"),
        ):
            get_settings()

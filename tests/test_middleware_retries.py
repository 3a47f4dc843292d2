"""Tests for the Retries middleware and compute_backoff."""

from __future__ import annotations

import logging
import threading

import pytest

from django_actors import Retry, Worker, actor
from django_actors.brokers.stub import StubBroker
from django_actors.message import current_millis
from django_actors.middleware import CurrentMessage, Retries
from django_actors.middleware.retries import compute_backoff


class Attempts:
    """What each attempt saw: its options, its message id and when it ran."""

    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def record(self):
        message = CurrentMessage.get_current_message()
        with self.lock:
            self.items.append(
                {"id": message.message_id, "options": dict(message.options), "at": current_millis()}
            )

    @property
    def retries(self):
        return [a["options"].get("retries", 0) for a in self.items]


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[CurrentMessage(), Retries(min_backoff=1, max_backoff=10)])
    yield broker
    broker.close()


# compute_backoff -----------------------------------------------------------------------


@pytest.mark.parametrize("attempts", range(12))
def test_backoff_with_jitter_stays_in_the_upper_half_of_the_exponential(attempts):
    expected = min(100 * 2**attempts, 5000)
    for _ in range(50):
        backoff = compute_backoff(attempts, min_backoff=100, max_backoff=5000)
        assert expected / 2 <= backoff <= expected


def test_backoff_without_jitter_is_exact():
    values = [compute_backoff(n, min_backoff=10, max_backoff=1000, jitter=False) for n in range(9)]
    assert values == [10, 20, 40, 80, 160, 320, 640, 1000, 1000]


def test_backoff_does_not_overflow_for_huge_attempt_counts():
    assert compute_backoff(10_000, min_backoff=15_000, max_backoff=60_000, jitter=False) == 60_000


def test_backoff_jitter_spreads_values():
    assert len({compute_backoff(5, min_backoff=1000, max_backoff=10**9) for _ in range(50)}) > 5


# The middleware ---------------------------------------------------------------------------


def test_max_retries_retries_then_dead_letters_keeping_the_message_id(broker, worker):
    attempts = Attempts()

    @actor(broker=broker, max_retries=3)
    def always_fails():
        attempts.record()
        raise ValueError("nope")

    message = always_fails.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert attempts.retries == [0, 1, 2, 3]
    assert {a["id"] for a in attempts.items} == {message.message_id}
    [letter] = broker.dead_letters
    assert letter.message_id == message.message_id
    assert letter.options["retries"] == 3
    assert "ValueError: nope" in letter.options["traceback"]


def test_max_retries_zero_fails_at_once(broker, worker):
    attempts = Attempts()

    @actor(broker=broker, max_retries=0)
    def once():
        attempts.record()
        raise ValueError

    once.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert attempts.retries == [0]
    assert len(broker.dead_letters) == 1


def test_a_message_option_overrides_max_retries(broker, worker):
    attempts = Attempts()

    @actor(broker=broker, max_retries=10)
    def fails():
        attempts.record()
        raise ValueError

    fails.send_with_options(max_retries=1)
    broker.join("default", timeout=5000, fail_fast=False)
    assert attempts.retries == [0, 1]


def test_the_middleware_default_max_retries_applies():
    broker = StubBroker(middleware=[CurrentMessage(), Retries(max_retries=2, min_backoff=1, max_backoff=2)])
    attempts = Attempts()

    @actor(broker=broker)
    def fails():
        attempts.record()
        raise ValueError

    fails.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.join("default", timeout=5000, fail_fast=False)
    finally:
        worker.stop()
    assert attempts.retries == [0, 1, 2]


def test_a_retry_succeeds(broker, worker):
    attempts = Attempts()

    @actor(broker=broker, max_retries=5)
    def flaky():
        attempts.record()
        if len(attempts.items) < 3:
            raise ConnectionResetError("try again")

    flaky.send()
    broker.join("default", timeout=5000)
    assert attempts.retries == [0, 1, 2]
    assert broker.dead_letters == []


def test_retries_wait_an_exponential_backoff_with_jitter(broker, worker):
    attempts = Attempts()
    failed_at = []

    @actor(broker=broker, max_retries=2, min_backoff=100, max_backoff=10_000)
    def slow_retries():
        attempts.record()
        failed_at.append(current_millis())
        raise ValueError

    slow_retries.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert attempts.retries == [0, 1, 2]
    first_delay = attempts.items[1]["options"]["eta"] - failed_at[0]
    second_delay = attempts.items[2]["options"]["eta"] - failed_at[1]
    assert 50 <= first_delay <= 100 + 20
    assert 100 <= second_delay <= 200 + 20
    assert attempts.items[1]["at"] >= attempts.items[1]["options"]["eta"]
    assert attempts.items[2]["at"] >= attempts.items[2]["options"]["eta"]


def test_max_backoff_caps_the_delay(broker, worker):
    attempts = Attempts()
    failed_at = []

    @actor(broker=broker, max_retries=1, min_backoff=60_000, max_backoff=40)
    def capped():
        attempts.record()
        failed_at.append(current_millis())
        raise ValueError

    capped.send()
    broker.join("default", timeout=5000, fail_fast=False)
    delay = attempts.items[1]["options"]["eta"] - failed_at[0]
    assert 20 <= delay <= 40 + 20


def test_retry_with_a_delay_uses_that_delay(broker, worker):
    attempts = Attempts()
    raised_at = []

    @actor(broker=broker, max_retries=3, min_backoff=60_000)
    def asks_for_retry():
        attempts.record()
        if len(attempts.items) == 1:
            raised_at.append(current_millis())
            raise Retry("later please", delay=150)

    asks_for_retry.send()
    broker.join("default", timeout=5000)
    assert attempts.retries == [0, 1]
    delay = attempts.items[1]["options"]["eta"] - raised_at[0]
    assert 150 <= delay <= 150 + 20
    assert attempts.items[1]["at"] >= attempts.items[1]["options"]["eta"]


def test_retry_is_not_logged_as_an_error(broker, worker, caplog):
    attempts = Attempts()

    @actor(broker=broker, max_retries=1)
    def asks():
        attempts.record()
        if len(attempts.items) == 1:
            raise Retry(delay=1)

    with caplog.at_level(logging.INFO):
        asks.send()
        broker.join("default", timeout=5000)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "asked for a retry" in caplog.text


def test_retry_counts_against_max_retries(broker, worker):
    attempts = Attempts()

    @actor(broker=broker, max_retries=2)
    def keeps_asking():
        attempts.record()
        raise Retry(delay=1)

    keeps_asking.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert attempts.retries == [0, 1, 2]
    assert len(broker.dead_letters) == 1


def test_retry_when_decides_instead_of_max_retries(broker, worker):
    attempts = Attempts()
    seen = []

    def retry_when(retries, exception):
        seen.append((retries, type(exception).__name__))
        return isinstance(exception, ConnectionError) and retries < 2

    @actor(broker=broker, max_retries=100, retry_when=retry_when)
    def network():
        attempts.record()
        raise ConnectionRefusedError

    @actor(broker=broker, max_retries=100, retry_when=retry_when)
    def logic():
        attempts.record()
        raise ValueError

    network.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert seen == [(0, "ConnectionRefusedError"), (1, "ConnectionRefusedError"), (2, "ConnectionRefusedError")]
    seen.clear()
    logic.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert seen == [(0, "ValueError")]
    assert len(broker.dead_letters) == 2


def test_throws_fails_at_once_without_an_error_log(broker, worker, caplog):
    attempts = Attempts()

    @actor(broker=broker, max_retries=5, throws=(KeyError, LookupError))
    def expected():
        attempts.record()
        raise KeyError("known problem")

    @actor(broker=broker, max_retries=0, throws=KeyError)
    def unexpected():
        raise ValueError("surprise")

    with caplog.at_level(logging.INFO):
        expected.send()
        broker.join("default", timeout=5000, fail_fast=False)
    assert attempts.retries == [0]
    assert len(broker.dead_letters) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    caplog.clear()
    unexpected.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_on_retry_exhausted_is_sent_the_message_and_the_counts(broker, worker):
    exhausted = []

    @actor(broker=broker, queue_name="exhausted")
    def gave_up(message_data, details):
        exhausted.append((message_data, details))

    @actor(broker=broker, max_retries=1, on_retry_exhausted="gave_up")
    def hopeless(x):
        raise ValueError

    message = hopeless.send(7)
    broker.join("default", timeout=5000, fail_fast=False)
    broker.join("exhausted", timeout=5000)
    [(data, details)] = exhausted
    assert data["message_id"] == message.message_id
    assert data["args"] == [7]
    assert details == {"retries": 1, "max_retries": 1}


def test_on_retry_exhausted_as_an_actor_and_as_a_message_option(broker, worker):
    exhausted = []

    @actor(broker=broker)
    def gave_up(message_data, details):
        exhausted.append(message_data["args"][0])

    @actor(broker=broker, max_retries=0, on_retry_exhausted=gave_up)
    def hopeless(x):
        raise ValueError

    @actor(broker=broker, max_retries=0)
    def hopeless_too(x):
        raise ValueError

    hopeless.send(1)
    hopeless_too.send_with_options(args=(2,), on_retry_exhausted=gave_up)
    for _ in range(2):
        broker.join("default", timeout=5000, fail_fast=False)
    assert sorted(exhausted) == [1, 2]


def test_a_successful_message_is_not_retried(broker, worker):
    attempts = Attempts()

    @actor(broker=broker, max_retries=3)
    def fine():
        attempts.record()

    fine.send()
    broker.join("default", timeout=5000)
    assert attempts.retries == [0]

"""``async def`` actors, run by a worker on its own event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from django.contrib.auth.models import Group

import django_actors
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import CurrentMessage
from django_actors.middleware.time_limit import TimeLimitExceeded
from django_actors.results.errors import ResultFailure
from django_actors.testing import run_until_complete

calls: dict[str, Any] = {}


@django_actors.actor(actor_name="async_add", store_results=True)
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    calls["loop_thread"] = threading.current_thread().name
    return x + y


@django_actors.actor(actor_name="async_flaky", store_results=True, max_retries=3, min_backoff=1, max_backoff=2)
async def flaky(tag: str) -> str:
    calls[tag] = calls.get(tag, 0) + 1
    await asyncio.sleep(0)
    if calls[tag] == 1:
        raise ConnectionError("first attempt fails")
    return f"{tag} after {calls[tag]} attempts"


@django_actors.actor(actor_name="async_broken", store_results=True, max_retries=0)
async def broken() -> None:
    await asyncio.sleep(0)
    raise LookupError("broken async actor")


@django_actors.actor(actor_name="async_current", store_results=True)
async def current() -> dict[str, Any]:
    await asyncio.sleep(0)
    message = CurrentMessage.get_current_message()
    return {"id": message.message_id, "actor": message.actor_name, "args": list(message.args)}


@django_actors.actor(actor_name="async_sleepy", store_results=True, max_retries=0, time_limit=200)
async def sleepy() -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        calls["sleepy_cancelled"] = True
        raise


@django_actors.actor(actor_name="async_rendezvous", store_results=True)
async def rendezvous(size: int) -> int:
    """Returns only once ``size`` rendezvous run at the same time on the loop."""
    state = calls.setdefault("rendezvous", {"arrived": 0, "event": asyncio.Event()})
    state["arrived"] += 1
    if state["arrived"] == size:
        state["event"].set()
    await asyncio.wait_for(state["event"].wait(), timeout=10)
    return int(state["arrived"])


@django_actors.actor(actor_name="async_orm", store_results=True)
async def count_groups(name: str) -> int:
    return await Group.objects.filter(name=name).acount()


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


def test_an_async_actor_runs_and_its_result_is_stored(stub_broker: StubBroker) -> None:
    message = add.send(20, 22)
    run_until_complete(fail_fast=True)
    assert message.get_result(block=True, timeout=5000) == 42
    assert calls["loop_thread"] == "django-actors-asyncio"


def test_an_exception_is_retried_and_the_retry_succeeds(stub_broker: StubBroker) -> None:
    message = flaky.send("job")
    run_until_complete(fail_fast=True)
    assert message.get_result(block=True, timeout=5000) == "job after 2 attempts"
    assert calls["job"] == 2


def test_an_exception_that_is_not_retried_is_stored_as_a_failure(stub_broker: StubBroker) -> None:
    message = broken.send()
    with pytest.raises(LookupError, match="broken async actor"):
        run_until_complete(fail_fast=True)
    with pytest.raises(ResultFailure, match="broken async actor"):
        message.get_result(block=True, timeout=5000)
    assert [proxy.message_id for proxy in stub_broker.dead_letters] == [message.message_id]


def test_the_current_message_is_visible_inside(stub_broker: StubBroker) -> None:
    message = current.send_with_options(args=(), kwargs={})
    run_until_complete(fail_fast=True)
    assert message.get_result(block=True, timeout=5000) == {
        "id": message.message_id,
        "actor": "async_current",
        "args": [],
    }


def test_the_time_limit_cancels_the_coroutine(stub_broker: StubBroker) -> None:
    message = sleepy.send()
    with pytest.raises(TimeLimitExceeded):
        run_until_complete(fail_fast=True, timeout=10_000)
    with pytest.raises(ResultFailure, match="TimeLimitExceeded"):
        message.get_result(block=True, timeout=5000)
    # The coroutine itself was cancelled, not left running on the loop.
    assert calls.get("sleepy_cancelled") is True


def test_async_actors_run_concurrently_on_one_loop(stub_broker: StubBroker) -> None:
    messages = [rendezvous.send(3) for _ in range(3)]
    run_until_complete(fail_fast=True, worker_threads=3)
    assert [m.get_result(block=True, timeout=5000) for m in messages] == [3, 3, 3]


@pytest.mark.django_db(transaction=True)
def test_an_async_actor_uses_the_async_orm(stub_broker: StubBroker) -> None:
    Group.objects.create(name="async")
    message = count_groups.send("async")
    run_until_complete(fail_fast=True)
    assert message.get_result(block=True, timeout=5000) == 1


def test_calling_an_async_actor_directly_runs_it() -> None:
    assert add(1, 2) == 3

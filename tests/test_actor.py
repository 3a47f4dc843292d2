"""Tests for django_actors.actor: the decorator, its options, and sending."""

from __future__ import annotations

import asyncio

import pytest

from django_actors import Actor, Message, actor, get_broker, set_broker
from django_actors import broker as broker_module
from django_actors.actor import registered_actors
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[*default_middleware(), Results(backend=StubBackend())])
    yield broker
    broker.close()


@pytest.fixture
def no_global_broker(monkeypatch):
    """No global broker yet; whatever a test installs is forgotten afterwards."""
    monkeypatch.setattr(broker_module, "_broker", None)


def ready(broker, queue_name="default"):
    return [Message.decode(data) for data in broker.queues[queue_name].ready]


# The decorator -------------------------------------------------------------------


def test_bare_decorator_defaults(stub_broker):
    @actor
    def actor_test_bare(a, b):
        return a + b

    assert isinstance(actor_test_bare, Actor)
    assert actor_test_bare.actor_name == "actor_test_bare"
    assert actor_test_bare.queue_name == "default"
    assert actor_test_bare.priority == 0
    assert actor_test_bare.options == {}
    assert actor_test_bare.fn(1, 2) == 3
    assert stub_broker.get_actor("actor_test_bare") is actor_test_bare
    assert actor_test_bare.broker is stub_broker


def test_decorator_with_name_queue_and_priority(broker):
    @actor(actor_name="renamed", queue_name="emails", priority=5, broker=broker)
    def original():
        pass

    assert original.actor_name == "renamed"
    assert original.queue_name == "emails"
    assert original.priority == 5
    assert broker.get_actor("renamed") is original
    assert "emails" in broker.get_declared_queues()


def test_explicit_broker_is_not_the_global_one(stub_broker, broker):
    @actor(broker=broker)
    def actor_test_explicit():
        pass

    assert actor_test_explicit.broker is broker
    assert "actor_test_explicit" in broker.actors
    assert "actor_test_explicit" not in stub_broker.actors
    actor_test_explicit.send()
    assert len(ready(broker)) == 1
    assert not stub_broker.queues["default"].ready


def test_actor_class_builds_a_subclass(broker):
    class LoudActor(Actor):
        pass

    @actor(actor_class=LoudActor, broker=broker)
    def shout():
        return "HI"

    assert type(shout) is LoudActor
    assert shout() == "HI"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_age", 1000),
        ("time_limit", 1000),
        ("notify_shutdown", True),
        ("on_success", "some_callback"),
        ("on_failure", "some_callback"),
        ("max_retries", 3),
        ("min_backoff", 10),
        ("max_backoff", 100),
        ("retry_when", lambda retries, exc: retries < 1),
        ("throws", (KeyError,)),
        ("on_retry_exhausted", "some_callback"),
        ("store_results", True),
        ("result_ttl", 1000),
        ("pipe_ignore", True),
    ],
)
def test_every_middleware_option_is_accepted(broker, option, value):
    @actor(broker=broker, **{option: value})
    def with_option():
        pass

    assert with_option.options == {option: value}
    assert broker.actors["with_option"] is with_option


def test_unknown_options_with_an_explicit_broker_are_named(broker):
    with pytest.raises(ValueError, match="max_retires, timelimit"):

        @actor(broker=broker, max_retires=3, timelimit=10)
        def typo():
            pass

    assert "typo" not in broker.actors


def test_unknown_options_with_a_global_broker_are_named(stub_broker):
    with pytest.raises(ValueError, match=r"'actor_test_global_typo'.*stroe_results"):

        @actor(stroe_results=True)
        def actor_test_global_typo():
            pass

    assert "actor_test_global_typo" not in stub_broker.actors


def test_unknown_options_with_no_broker_yet_are_named(no_global_broker):
    with pytest.raises(ValueError, match="bogus"):

        @actor(bogus=1)
        def actor_test_no_broker_typo():
            pass

    # The check did not build the global broker.
    assert broker_module._broker is None


def test_option_the_explicit_broker_lacks_is_an_error():
    bare = StubBroker(middleware=[])
    with pytest.raises(ValueError, match="max_retries"):

        @actor(broker=bare, max_retries=3)
        def needs_retries():
            pass


def test_option_the_global_broker_lacks_is_an_error_and_leaves_nothing_behind(no_global_broker):
    set_broker(StubBroker(middleware=[]))
    with pytest.raises(ValueError, match="store_results"):

        @actor(store_results=True)
        def actor_test_lacking():
            pass

    assert "actor_test_lacking" not in {a.actor_name for a in registered_actors()}
    assert "actor_test_lacking" not in get_broker().actors


@pytest.mark.parametrize("queue_name", ["", "has space", "a/b", "q:1", "x" * 129, 123, None])
def test_invalid_queue_names_are_rejected(broker, queue_name):
    with pytest.raises(ValueError, match="Invalid queue name"):

        @actor(broker=broker, queue_name=queue_name)
        def badly_queued():
            pass


@pytest.mark.parametrize("queue_name", ["a", "emails.high", "A_b-9", "x" * 128])
def test_valid_queue_names_are_accepted(broker, queue_name):
    @actor(broker=broker, queue_name=queue_name)
    def well_queued():
        pass

    assert queue_name in broker.get_declared_queues()


@pytest.mark.parametrize("actor_name", ["", 123])
def test_invalid_actor_names_are_rejected(broker, actor_name):
    with pytest.raises(ValueError, match="Invalid actor name"):

        @actor(broker=broker, actor_name=actor_name)
        def badly_named():
            pass


@pytest.mark.parametrize("priority", ["high", 1.5, True])
def test_invalid_priorities_are_rejected(broker, priority):
    with pytest.raises(ValueError, match="Invalid priority"):

        @actor(broker=broker, priority=priority)
        def badly_prioritised():
            pass


# Messages and sending ---------------------------------------------------------------


def test_send_enqueues_an_encoded_message(broker):
    @actor(broker=broker, queue_name="work")
    def add(a, b, *, c=0):
        return a + b + c

    message = add.send(1, 2, c=3)
    assert isinstance(message, Message)
    assert (message.actor_name, message.queue_name) == ("add", "work")
    assert message.args == (1, 2)
    assert message.kwargs == {"c": 3}
    assert ready(broker, "work") == [message]


def test_send_with_options_carries_args_kwargs_and_options(broker):
    @actor(broker=broker)
    def add(a, b):
        pass

    message = add.send_with_options(args=[1, 2], kwargs={"b": 2}, max_retries=1, custom="x")
    assert message.args == (1, 2)
    assert message.kwargs == {"b": 2}
    assert message.options == {"max_retries": 1, "custom": "x"}
    assert ready(broker) == [message]


def test_send_with_options_delay_delays_the_message(broker):
    @actor(broker=broker)
    def later():
        pass

    before = broker_module.current_millis()
    message = later.send_with_options(delay=60_000)
    queue = broker.queues["default"]
    assert not queue.ready
    assert len(queue.delayed) == 1
    assert message.options["eta"] >= before + 60_000
    assert Message.decode(queue.delayed[0][2]) == message


@pytest.mark.parametrize("delay", [-1, "soon"])
def test_send_with_options_rejects_bad_delays(broker, delay):
    @actor(broker=broker)
    def later():
        pass

    with pytest.raises(ValueError, match="delay"):
        later.send_with_options(delay=delay)
    assert not broker.queues["default"].ready
    assert not broker.queues["default"].delayed


def test_message_builds_without_sending(broker):
    @actor(broker=broker)
    def add(a, b):
        pass

    message = add.message(1, b=2)
    assert message.args == (1,)
    assert message.kwargs == {"b": 2}
    assert message.options == {}
    assert not broker.queues["default"].ready


def test_message_with_options_builds_without_sending(broker):
    @actor(broker=broker, queue_name="q")
    def add(a, b):
        pass

    message = add.message_with_options(args=(1, 2), max_retries=0)
    assert message.queue_name == "q"
    assert message.options == {"max_retries": 0}
    assert not broker.queues["q"].ready
    broker.enqueue(message)
    assert ready(broker, "q") == [message]


def test_message_with_options_keeps_a_delay_in_milliseconds_and_checks_it(broker):
    import datetime

    @actor(broker=broker)
    def add():
        pass

    assert add.message_with_options(delay=10).options == {"delay": 10}
    assert add.message_with_options(delay=datetime.timedelta(seconds=1.5)).options == {"delay": 1500}
    assert add.message_with_options(delay=0).options == {}
    for bad in (-1, "10", True, float("nan")):
        with pytest.raises(ValueError, match="delay must be"):
            add.message_with_options(delay=bad)


def test_callback_actors_in_message_options_are_sent_by_name(broker):
    @actor(broker=broker)
    def cb(message_data, result):
        pass

    @actor(broker=broker)
    def work():
        pass

    message = work.send_with_options(on_success=cb, on_failure=cb, on_retry_exhausted=cb)
    assert message.options == {"on_success": "cb", "on_failure": "cb", "on_retry_exhausted": "cb"}
    assert ready(broker)[0].options["on_success"] == "cb"


def test_callback_options_of_the_wrong_type_are_rejected(broker):
    @actor(broker=broker)
    def work():
        pass

    with pytest.raises(TypeError, match="on_success"):
        work.send_with_options(on_success=42)
    assert not broker.queues["default"].ready


def test_call_runs_in_process_without_the_broker(broker):
    calls = []

    @actor(broker=broker)
    def record(value):
        calls.append(value)
        return value * 2

    assert record(21) == 42
    assert calls == [21]
    assert not broker.queues["default"].ready


def test_call_runs_an_async_actor_to_completion(broker):
    @actor(broker=broker)
    async def double(value):
        await asyncio.sleep(0)
        return value * 2

    assert double.is_async
    assert double(4) == 8


def test_call_inside_a_running_loop_returns_an_awaitable(broker):
    @actor(broker=broker)
    async def double(value):
        await asyncio.sleep(0)
        return value * 2

    async def main():
        return await double(5)

    assert asyncio.run(main()) == 10


def test_call_propagates_exceptions(broker):
    @actor(broker=broker)
    def boom():
        raise KeyError("nope")

    with pytest.raises(KeyError):
        boom()


def test_or_between_actors_explains_itself(broker):
    @actor(broker=broker)
    def one():
        pass

    with pytest.raises(TypeError, match="Compose messages"):
        one | one


def test_repr_and_str(broker):
    @actor(broker=broker, queue_name="q")
    def shown():
        pass

    assert "actor_name='shown'" in repr(shown)
    assert "queue_name='q'" in repr(shown)
    assert str(shown) == "Actor(shown)"


# The global broker ------------------------------------------------------------------------


def test_actor_declared_before_any_broker_binds_lazily(no_global_broker):
    @actor(queue_name="lazy")
    def actor_test_lazy():
        pass

    assert broker_module._broker is None
    later = StubBroker()
    set_broker(later)
    assert later.get_actor("actor_test_lazy") is actor_test_lazy
    assert "lazy" in later.get_declared_queues()
    assert actor_test_lazy.broker is later


def test_actor_follows_a_replaced_global_broker(no_global_broker):
    first = StubBroker()
    set_broker(first)

    @actor
    def actor_test_follow():
        pass

    second = StubBroker()
    set_broker(second)
    actor_test_follow.send()
    assert len(second.queues["default"].ready) == 1
    assert not first.queues["default"].ready


def test_broker_setter_moves_the_actor(broker):
    other = StubBroker()

    @actor(broker=broker)
    def movable():
        pass

    movable.broker = other
    movable.send()
    assert "movable" in other.actors
    assert len(other.queues["default"].ready) == 1
    assert not broker.queues["default"].ready


def test_a_global_actor_runs_on_the_stub_worker(stub_broker, stub_worker):
    @actor(store_results=True)
    def actor_test_on_worker(x):
        return x * 3

    message = actor_test_on_worker.send(5)
    assert message.get_result(block=True, timeout=5000) == 15
    stub_broker.join("default", timeout=5000, fail_fast=True)

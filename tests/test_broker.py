"""Tests for the Broker base class: middleware, actors, sizes and the global broker."""

from __future__ import annotations

import logging

import pytest

from django_actors import (
    ActorNotFound,
    DjangoActorsError,
    Message,
    MessageProxy,
    MessageTooLarge,
    Middleware,
    actor,
    get_broker,
    set_broker,
)
from django_actors import broker as broker_module
from django_actors.broker import NoResultsBackend, default_middleware, reset_broker, validate_queue_name
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend


class Recording(Middleware):
    """Records the enqueue and declare hooks it sees into a shared list."""

    def __init__(self, name, calls, actor_options=()):
        self.name = name
        self.calls = calls
        self.actor_options = set(actor_options)

    def before_enqueue(self, broker, message, delay):
        self.calls.append(("before_enqueue", self.name))

    def after_enqueue(self, broker, message, delay):
        self.calls.append(("after_enqueue", self.name))

    def after_declare_actor(self, broker, actor):
        self.calls.append(("after_declare_actor", self.name, actor.actor_name))


class Recorder(Recording):
    pass


class Other(Recording):
    pass


class FailingAfter(Middleware):
    def after_enqueue(self, broker, message, delay):
        raise RuntimeError("after hook broke")


class FailingBefore(Middleware):
    def before_enqueue(self, broker, message, delay):
        raise RuntimeError("not today")


@pytest.fixture
def no_global_broker(monkeypatch):
    monkeypatch.setattr(broker_module, "_broker", None)


def ready(broker, queue_name="default"):
    return len(broker.queues[queue_name].ready)


def test_default_middleware_in_order():
    kinds = [type(m) for m in default_middleware()]
    assert kinds == [AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries]
    assert [type(m) for m in StubBroker().middleware] == kinds
    assert StubBroker(middleware=[]).middleware == []


def test_default_middleware_are_new_instances():
    assert default_middleware()[0] is not default_middleware()[0]


def test_actor_options_are_the_union_of_the_middlewares():
    broker = StubBroker(middleware=[Retries(), Results(backend=StubBackend())])
    assert broker.actor_options == Retries.actor_options | Results.actor_options


def test_before_hooks_run_in_order_and_after_hooks_in_reverse():
    calls: list[tuple[str, ...]] = []
    broker = StubBroker(middleware=[Recorder("a", calls), Recorder("b", calls), Recorder("c", calls)])
    broker.declare_queue("default")
    broker.enqueue(Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={}))
    assert calls == [
        ("before_enqueue", "a"),
        ("before_enqueue", "b"),
        ("before_enqueue", "c"),
        ("after_enqueue", "c"),
        ("after_enqueue", "b"),
        ("after_enqueue", "a"),
    ]


def test_add_middleware_before_and_after_an_installed_class():
    calls: list[tuple[str, ...]] = []
    broker = StubBroker(middleware=[Recorder("a", calls), Other("z", calls)])
    broker.add_middleware(Recorder("first", calls), before=Recorder)
    broker.add_middleware(Recorder("after-a", calls), after=Recorder)
    broker.add_middleware(Recorder("last", calls))
    assert [m.name for m in broker.middleware] == ["first", "a", "after-a", "z", "last"]
    broker.declare_queue("default")
    broker.enqueue(Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={}))
    assert [name for hook, name in calls if hook == "before_enqueue"] == ["first", "a", "after-a", "z", "last"]


def test_add_middleware_after_uses_the_last_instance_of_the_class():
    calls: list[tuple[str, ...]] = []
    broker = StubBroker(middleware=[Recorder("a", calls), Recorder("b", calls), Other("z", calls)])
    broker.add_middleware(Other("new", calls), after=Recorder)
    assert [m.name for m in broker.middleware] == ["a", "b", "new", "z"]


def test_add_middleware_rejects_both_anchors():
    broker = StubBroker(middleware=[])
    with pytest.raises(ValueError, match="either 'before' or 'after'"):
        broker.add_middleware(Retries(), before=AgeLimit, after=TimeLimit)


def test_add_middleware_rejects_a_missing_anchor():
    broker = StubBroker(middleware=[Retries()])
    with pytest.raises(ValueError, match="TimeLimit is not installed"):
        broker.add_middleware(AgeLimit(), before=TimeLimit)
    assert [type(m) for m in broker.middleware] == [Retries]


def test_add_middleware_adds_options_and_sees_declared_actors():
    calls: list[tuple[str, ...]] = []
    broker = StubBroker(middleware=[])

    @actor(broker=broker)
    def already_there():
        pass

    broker.add_middleware(Recorder("late", calls, actor_options={"colour"}))
    assert "colour" in broker.actor_options
    assert ("after_declare_actor", "late", "already_there") in calls

    @actor(broker=broker, colour="blue")
    def coloured():
        pass

    assert coloured.options == {"colour": "blue"}


def test_an_after_hook_error_is_logged_and_other_hooks_still_run(caplog):
    calls: list[tuple[str, ...]] = []
    broker = StubBroker(middleware=[Recorder("a", calls), FailingAfter(), Recorder("c", calls)])
    broker.declare_queue("default")
    with caplog.at_level(logging.ERROR):
        message = broker.enqueue(Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={}))
    assert ("after_enqueue", "a") in calls and ("after_enqueue", "c") in calls
    assert ready(broker) == 1
    assert message.actor_name == "x"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "FailingAfter.after_enqueue" in errors[0].getMessage()
    assert "after hook broke" in caplog.text


def test_a_before_hook_error_stops_the_enqueue():
    calls: list[tuple[str, ...]] = []
    broker = StubBroker(middleware=[FailingBefore(), Recorder("b", calls)])
    broker.declare_queue("default")
    with pytest.raises(RuntimeError, match="not today"):
        broker.enqueue(Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={}))
    assert ready(broker) == 0
    assert calls == []


def test_get_actor_and_declared_actors():
    broker = StubBroker()

    @actor(broker=broker)
    def known():
        pass

    assert broker.get_actor("known") is known
    assert broker.get_declared_actors() == {"known"}
    with pytest.raises(ActorNotFound, match="'unknown' is not declared"):
        broker.get_actor("unknown")


def test_declare_actor_rejects_options_no_installed_middleware_declares():
    broker = StubBroker(middleware=[AgeLimit()])
    with pytest.raises(ValueError, match="option\\(s\\) that no middleware declares: max_retries"):

        @actor(broker=broker, max_age=10, max_retries=1)
        def picky():
            pass

    assert "picky" not in broker.actors
    # Declaring directly (an actor built elsewhere) is checked by the broker too.
    from django_actors import Actor

    direct = Actor(lambda: None, broker=None, actor_name="direct", queue_name="q", priority=0, options={"x": 1})
    with pytest.raises(ValueError, match="'direct' uses option\\(s\\) that no installed middleware declares: x"):
        broker.declare_actor(direct)


def test_declare_queue_validates_and_is_idempotent():
    broker = StubBroker(middleware=[])
    broker.declare_queue("q")
    broker.queues["q"].ready.append(b"x")
    broker.declare_queue("q")
    assert list(broker.queues["q"].ready) == [b"x"]
    with pytest.raises(ValueError, match="Invalid queue name"):
        broker.declare_queue("bad queue")


@pytest.mark.parametrize("name", ["default", "a.b-c_D9"])
def test_validate_queue_name_accepts(name):
    assert validate_queue_name(name) == name


def test_get_results_backend_without_results_is_a_clear_error():
    broker = StubBroker()
    assert not broker.has_results_backend()
    with pytest.raises(NoResultsBackend, match="Results middleware") as info:
        broker.get_results_backend()
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, DjangoActorsError)


def test_get_results_backend_with_a_backendless_results_middleware_is_an_error():
    broker = StubBroker(middleware=[Results()])
    with pytest.raises(NoResultsBackend):
        broker.get_results_backend()


def test_get_results_backend_returns_the_middlewares_backend():
    backend = StubBackend()
    broker = StubBroker(middleware=[Results(backend=backend)])
    assert broker.has_results_backend()
    assert broker.get_results_backend() is backend


def test_enqueue_declares_an_unknown_queue():
    broker = StubBroker(middleware=[])
    broker.enqueue(Message(queue_name="fresh", actor_name="x", args=(), kwargs={}, options={}))
    assert "fresh" in broker.get_declared_queues()
    assert ready(broker, "fresh") == 1


def test_enqueue_with_delay_sets_an_eta_and_keeps_the_id():
    broker = StubBroker(middleware=[])
    message = Message(queue_name="q", actor_name="x", args=(), kwargs={}, options={})
    before = broker_module.current_millis()
    delayed = broker.enqueue(message, delay=5000)
    assert delayed.message_id == message.message_id
    assert delayed.options["eta"] >= before + 5000
    assert "eta" not in message.options
    assert len(broker.queues["q"].delayed) == 1


def test_enqueue_many_returns_messages_in_order():
    broker = StubBroker(middleware=[])
    messages = [Message(queue_name="q", actor_name="x", args=(i,), kwargs={}, options={}) for i in range(3)]
    assert broker.enqueue_many(messages) == messages
    assert [Message.decode(d).args for d in broker.queues["q"].ready] == [(0,), (1,), (2,)]
    assert broker.enqueue_many([]) == []


def test_max_message_size_is_enforced_at_send_and_nothing_is_enqueued():
    broker = StubBroker(max_message_size=300)

    @actor(broker=broker)
    def big(payload):
        pass

    big.send("x")
    with pytest.raises(MessageTooLarge, match=r"'big' is .* over the limit of 300 bytes"):
        big.send("x" * 400)
    with pytest.raises(MessageTooLarge):
        broker.enqueue_many([big.message("y"), big.message("y" * 400)])
    assert ready(broker) == 1


def test_message_exactly_at_the_size_limit_is_accepted():
    message = Message(queue_name="q", actor_name="x", args=("abc",), kwargs={}, options={})
    broker = StubBroker(middleware=[], max_message_size=len(message.encode()))
    broker.enqueue(message)
    assert ready(broker, "q") == 1


def test_message_proxy_reads_through_and_records_failures():
    message = Message(queue_name="q", actor_name="x", args=(1,), kwargs={}, options={"a": 1})
    proxy = MessageProxy(message, tag="t")
    assert proxy.message is message
    assert (proxy.actor_name, proxy.args, proxy.options, proxy.tag) == ("x", (1,), {"a": 1}, "t")
    assert not proxy.failed and proxy.fail_reason is None
    proxy.stuff_exception(ValueError("boom"))
    assert proxy.fail_reason == "ValueError: boom"
    proxy.fail("gave up")
    assert proxy.failed and proxy.fail_reason == "gave up"
    proxy.clear_exception()
    assert proxy.exception is None


def test_message_proxies_sort_by_priority_then_age():
    old = MessageProxy(Message(queue_name="q", actor_name="x", args=(), kwargs={}, options={}, message_timestamp=1))
    new = MessageProxy(Message(queue_name="q", actor_name="x", args=(), kwargs={}, options={}, message_timestamp=2))
    urgent = MessageProxy(Message(queue_name="q", actor_name="x", args=(), kwargs={}, options={}, message_timestamp=3))
    urgent.priority = -1
    assert sorted([new, old, urgent]) == [urgent, old, new]


# The global broker ------------------------------------------------------------------------


def test_get_broker_is_lazy_and_built_from_settings(no_global_broker):
    broker = get_broker()
    assert isinstance(broker, StubBroker)  # tests/settings.py selects the stub broker
    assert broker.has_results_backend()
    assert get_broker() is broker


def test_set_broker_declares_registered_actors(no_global_broker):
    @actor(queue_name="registered")
    def broker_test_registered():
        pass

    broker = StubBroker()
    set_broker(broker)
    assert get_broker() is broker
    assert broker.get_actor("broker_test_registered") is broker_test_registered
    assert "registered" in broker.get_declared_queues()


def test_set_broker_skips_actors_it_cannot_support(no_global_broker):
    @actor(max_retries=1)
    def broker_test_needs_retries():
        pass

    bare = StubBroker(middleware=[])
    set_broker(bare)
    assert "broker_test_needs_retries" not in bare.actors
    with pytest.raises(ValueError, match="max_retries"):
        broker_test_needs_retries.send()


def test_reset_broker_closes_and_forgets(no_global_broker):
    closed = []

    class Closing(StubBroker):
        def close(self):
            closed.append(self)

    broker = Closing()
    set_broker(broker)
    reset_broker()
    assert closed == [broker]
    assert broker_module._broker is None
    assert get_broker() is not broker

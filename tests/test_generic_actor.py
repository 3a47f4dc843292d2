"""Tests for GenericActor: class-based actors with Meta options."""

from __future__ import annotations

import pytest

from django_actors import Actor, GenericActor
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[*default_middleware(), Results(backend=StubBackend())])
    yield broker
    broker.close()


def test_subclass_becomes_an_actor_named_after_the_class(broker):
    class Add(GenericActor):
        class Meta:
            broker = None

        def perform(self, a, b):
            return a + b

    assert isinstance(Add.__actor__, Actor)
    assert isinstance(Add, GenericActor)
    assert Add.actor_name == "Add"
    assert Add.queue_name == "default"
    assert Add(1, 2) == 3


def test_meta_options_configure_the_actor(broker):
    the_broker = broker

    class Multiply(GenericActor):
        class Meta:
            broker = the_broker
            actor_name = "multiply"
            queue_name = "maths"
            priority = 3
            max_retries = 0
            store_results = True

        def perform(self, a, b):
            return a * b

    assert Multiply.actor_name == "multiply"
    assert Multiply.queue_name == "maths"
    assert Multiply.priority == 3
    assert Multiply.options == {"max_retries": 0, "store_results": True}
    assert broker.get_actor("multiply") is Multiply.__actor__


def test_generic_actor_runs_in_a_worker_and_stores_its_result(broker, worker):
    the_broker = broker

    class Greet(GenericActor):
        class Meta:
            broker = the_broker
            store_results = True

        def perform(self, name):
            return self.greeting() + name

        def greeting(self):
            return "hello "

    message = Greet.send("ada")
    assert message.get_result(backend=broker.get_results_backend(), block=True, timeout=5000) == "hello ada"


def test_async_perform_is_awaited(broker, worker):
    the_broker = broker

    class AsyncGreet(GenericActor):
        class Meta:
            broker = the_broker
            store_results = True

        async def perform(self, name):
            return f"hi {name}"

    assert AsyncGreet.is_async
    assert AsyncGreet("bob") == "hi bob"
    message = AsyncGreet.send("eve")
    assert message.get_result(backend=broker.get_results_backend(), block=True, timeout=5000) == "hi eve"


def test_abstract_base_is_not_an_actor_and_its_options_are_inherited(broker):
    the_broker = broker

    class Base(GenericActor):
        class Meta:
            abstract = True
            broker = the_broker
            queue_name = "base-queue"
            max_retries = 1

        def perform(self):
            return self.name()

    assert isinstance(Base, type)
    assert "Base" not in broker.actors

    class First(Base):
        def name(self):
            return "first"

    class Second(Base):
        class Meta:
            max_retries = 5

        def name(self):
            return "second"

    assert First.queue_name == "base-queue"
    assert First.options == {"max_retries": 1}
    assert First() == "first"
    assert Second.queue_name == "base-queue"
    assert Second.options == {"max_retries": 5}
    assert Second() == "second"


def test_abstract_bases_can_stack(broker):
    the_broker = broker

    class Root(GenericActor):
        class Meta:
            abstract = True
            broker = the_broker
            queue_name = "root"

    class Middle(Root):
        class Meta:
            abstract = True
            priority = 7

    class Leaf(Middle):
        def perform(self):
            return "leaf"

    assert isinstance(Middle, type)
    assert Leaf.queue_name == "root"
    assert Leaf.priority == 7
    assert Leaf() == "leaf"


def test_missing_perform_fails_when_called(broker):
    the_broker = broker

    class Lazy(GenericActor):
        class Meta:
            broker = the_broker

    with pytest.raises(NotImplementedError, match=r"Lazy does not implement perform\(\)"):
        Lazy()


def test_unknown_meta_option_is_an_error(broker):
    the_broker = broker
    with pytest.raises(ValueError, match="max_retires"):

        class Typo(GenericActor):
            class Meta:
                broker = the_broker
                max_retires = 3

            def perform(self):
                pass

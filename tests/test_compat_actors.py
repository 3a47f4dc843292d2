"""Actor and message behaviour that code moving over from dramatiq relies on.

Each test states a behaviour in this project's words: names, return values,
errors and the class-based actor model that dramatiq users already know.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

import pytest

from django_actors import Actor, GenericActor, Message, MessageProxy, Worker, actor
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.message import current_millis
from django_actors.middleware import CurrentMessage, SkipMessage

from .redis_helpers import wait_for


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[*default_middleware(), CurrentMessage()])
    yield broker
    broker.close()


# Actors -----------------------------------------------------------------------


def test_an_actor_whose_function_has_no_module_logs_under_an_underscore(broker):
    namespace: dict = {}
    exec("def shell_defined(x):\n    return x\n", namespace)  # noqa: S102 - a function without a module
    fn = namespace["shell_defined"]
    fn.__module__ = None  # what a shell leaves when there is no module name

    shell_actor = actor(fn, broker=broker)

    assert shell_actor.logger.name == "_.shell_defined"


def test_a_second_actor_with_a_taken_name_on_the_same_broker_is_refused(broker):
    @actor(broker=broker, actor_name="taken")
    def first():
        return 1

    with pytest.raises(ValueError, match=r"^An actor named 'taken' is already registered\.$"):

        @actor(broker=broker, actor_name="taken")
        def second():
            return 2

    assert broker.get_actor("taken") is first


def test_the_same_name_on_another_broker_is_allowed(broker):
    other = StubBroker()
    try:

        @actor(broker=broker, actor_name="shared_name")
        def here():
            pass

        @actor(broker=other, actor_name="shared_name")
        def there():
            pass

        assert broker.get_actor("shared_name") is here
        assert other.get_actor("shared_name") is there
    finally:
        other.close()


def test_a_name_carried_over_from_an_earlier_global_broker_can_be_defined_again(stub_broker):
    @actor(actor_name="carried_over")
    def old_definition():
        return "old"

    replacement = StubBroker()
    from django_actors import set_broker

    set_broker(replacement)  # carries old_definition over to the new broker
    try:
        assert replacement.get_actor("carried_over") is old_definition

        @actor(actor_name="carried_over")
        def new_definition():
            return "new"

        assert replacement.get_actor("carried_over") is new_definition
        with pytest.raises(ValueError, match="already registered"):

            @actor(actor_name="carried_over")
            def third_definition():
                return "third"

    finally:
        set_broker(stub_broker)
        replacement.close()


def test_send_with_options_takes_a_timedelta_delay(broker, worker):
    ran = []

    @actor(broker=broker)
    def record(value):
        ran.append(value)

    sent_at = time.monotonic()
    record.send_with_options(args=("late",), delay=datetime.timedelta(milliseconds=300))
    record.send_with_options(args=("soon",), delay=datetime.timedelta(milliseconds=50))
    wait_for(lambda: len(ran) == 2)
    assert ran == ["soon", "late"]
    assert time.monotonic() - sent_at >= 0.3


@pytest.mark.parametrize("delay", [-1, datetime.timedelta(seconds=-1), "10", True, float("nan"), float("inf")])
def test_a_bad_delay_is_refused_and_nothing_is_enqueued(broker, delay):
    @actor(broker=broker)
    def noop():
        pass

    with pytest.raises(ValueError, match="delay"):
        noop.send_with_options(delay=delay)
    assert len(broker.queues["default"]) == 0


def test_a_zero_timedelta_sends_at_once(broker):
    @actor(broker=broker)
    def noop():
        pass

    noop.send_with_options(delay=datetime.timedelta(0))
    assert len(broker.queues["default"].ready) == 1


# Class-based actors ---------------------------------------------------------------


def test_a_generic_actor_keeps_its_class_attributes_and_helper_methods(broker):
    the_broker = broker

    class Report(GenericActor):
        STATUS_DONE = "done"

        class Meta:
            broker = the_broker
            queue_name = "reports"

        def title(self, name):
            return f"Report {name}"

        def perform(self, name):
            return self.title(name)

    assert isinstance(Report, GenericActor)
    assert isinstance(Report.__actor__, Actor)
    assert Report.STATUS_DONE == "done"
    assert Report.title("x") == "Report x"
    assert Report("y") == "Report y"
    # What the class does not define comes from its actor.
    assert Report.queue_name == "reports"
    assert Report.actor_name == "Report"
    assert Report.send("z").actor_name == "Report"
    assert broker.get_actor("Report") is Report.__actor__
    # The Meta stays readable on the class.
    assert Report.Meta.queue_name == "reports"


def test_a_generic_actor_without_perform_can_be_defined_but_not_run(broker, worker):
    the_broker = broker

    class Constants(GenericActor):
        LIMIT = 3

        class Meta:
            broker = the_broker
            max_retries = 0

    assert Constants.LIMIT == 3
    with pytest.raises(NotImplementedError, match=r"^Constants does not implement perform\(\)$"):
        Constants(1, key="value")

    # Sent to a worker, the message fails with that error and is dead-lettered.
    Constants.send()
    broker.join("default", timeout=5000, fail_fast=False)
    [dead] = broker.dead_letters
    assert isinstance(dead.exception, NotImplementedError)


def test_a_missing_attribute_of_a_generic_actor_raises_attribute_error(broker):
    the_broker = broker

    class Small(GenericActor):
        class Meta:
            broker = the_broker

        def perform(self):
            return None

    with pytest.raises(AttributeError, match="no_such_thing"):
        Small.no_such_thing  # noqa: B018
    with pytest.raises(AttributeError):
        GenericActor.no_such_thing  # noqa: B018


def test_meta_actor_names_a_decorator_given_the_instance(broker):
    the_broker = broker
    calls = []

    def tracking_actor(instance, **options):
        calls.append((instance, options))
        return actor(instance, broker=the_broker, **options)

    class Tracked(GenericActor):
        class Meta:
            actor = tracking_actor
            queue_name = "tracked"

        def perform(self, x):
            return x * 2

    [(instance, options)] = calls
    assert instance is Tracked
    assert options == {"queue_name": "tracked"}
    assert Tracked.__actor__.actor_name == "Tracked"  # the instance's __name__
    assert Tracked.__actor__.queue_name == "tracked"
    assert Tracked(4) == 8
    assert Tracked.__actor__(5) == 10


def test_a_generic_actor_can_be_a_callback(broker, worker):
    the_broker = broker
    seen = []

    class Collect(GenericActor):
        class Meta:
            broker = the_broker

        def perform(self, message_data, result):
            seen.append(result)

    @actor(broker=broker)
    def produce():
        return 7

    message = produce.send_with_options(on_success=Collect)
    assert message.options == {"on_success": "Collect"}
    wait_for(lambda: seen == [7])


def test_an_async_perform_runs_to_completion_when_called(broker):
    the_broker = broker

    class Later(GenericActor):
        class Meta:
            broker = the_broker

        async def perform(self, x):
            return x + 1

    assert Later.is_async
    assert Later(1) == 2


def test_the_repr_of_a_generic_actor_names_its_actor(broker):
    the_broker = broker

    class Shown(GenericActor):
        class Meta:
            broker = the_broker

        def perform(self):
            return None

    assert "actor_name='Shown'" in repr(Shown)
    assert "Shown.perform" in repr(Shown.__actor__)


# Messages -------------------------------------------------------------------------


def test_a_message_has_the_named_tuple_api(broker):
    @actor(broker=broker)
    def add(x, y):
        return x + y

    message = add.message(1, 2)
    assert message._fields == tuple(message.asdict())
    assert message._asdict() == message.asdict()
    assert message._field_defaults == {}
    moved = message._replace(queue_name="elsewhere")
    assert moved.queue_name == "elsewhere"
    assert moved.message_id == message.message_id
    assert message.queue_name == "default"


def test_messages_sort_field_by_field():
    def make(args):
        return Message(
            queue_name="q", actor_name="a", args=args, kwargs={}, options={}, message_id="m", message_timestamp=1
        )

    assert sorted([make((3,)), make((1,)), make((2,))]) == [make((1,)), make((2,)), make((3,))]
    assert make((1,)) < make((2,))


# Middleware -------------------------------------------------------------------------


def test_the_current_message_is_the_workers_proxy(broker, worker):
    seen = []
    done = threading.Event()

    @actor(broker=broker)
    def look(x):
        current = CurrentMessage.get_current_message()
        seen.append((current, current.message_id, current.args, current.message))
        done.set()

    sent = look.send(5)
    assert done.wait(5)
    [(current, message_id, args, message)] = seen
    assert isinstance(current, MessageProxy)
    assert message_id == sent.message_id
    assert args == (5,)
    assert message == sent


def test_a_message_past_its_age_limit_fails_a_fail_fast_join_with_its_reason():
    broker = StubBroker()
    try:

        @actor(broker=broker, max_age=100)
        def too_old():
            pass

        broker.enqueue(too_old.message().copy(message_timestamp=current_millis() - 10_000))
        worker = Worker(broker, worker_timeout=50, worker_threads=1)
        worker.start()
        try:
            with pytest.raises(SkipMessage, match="Message age limit exceeded"):
                broker.join("default", timeout=5000, fail_fast=True)
            [dead] = broker.dead_letters
            assert "over its max_age of 100 ms" in (dead.fail_reason or "")
        finally:
            worker.stop(timeout=5000)
        [dead] = broker.dead_letters
        assert "max_age" in dead.fail_reason
    finally:
        broker.close()


def test_on_failure_does_not_count_an_exception_the_actor_throws(broker, worker):
    retries_seen = []

    @actor(broker=broker)
    def failed(message_data, error):
        retries_seen.append(message_data["options"].get("retries"))

    @actor(broker=broker, throws=(KeyError,), on_failure=failed)
    def expected():
        raise KeyError("expected")

    expected.send()
    wait_for(lambda: retries_seen == [None])


def test_logging_names_do_not_change_for_module_level_actors(broker):
    @actor(broker=broker)
    def named():
        pass

    assert named.logger.name == f"{__name__}.named"
    assert isinstance(named.logger, logging.Logger)

"""``send_on_commit`` and ``run_on_commit``: nothing is enqueued unless the
transaction commits, on a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.db import transaction

import django_actors
from django_actors import group, pipeline
from django_actors.brokers.stub import StubBroker
from django_actors.testing import run_until_complete

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parent.parent


@django_actors.actor(actor_name="on_commit_count_groups", queue_name="on_commit")
def count_groups(name: str) -> int:
    """Sees the committed row: returns how many auth groups have this name."""
    return Group.objects.filter(name=name).count()


@django_actors.actor(actor_name="on_commit_add", queue_name="on_commit")
def add(x: int, y: int) -> int:
    return x + y


def queued(broker: StubBroker) -> int:
    return len(broker.queues["on_commit"]) if "on_commit" in broker.queues else 0


def test_send_on_commit_enqueues_after_commit_and_the_worker_sees_the_row(stub_broker: StubBroker) -> None:
    with transaction.atomic():
        Group.objects.create(name="committed")
        message = count_groups.send_on_commit("committed")
        assert queued(stub_broker) == 0  # not before the commit
    assert queued(stub_broker) == 1
    assert message.message_id  # returned at once, with the id the worker will see
    run_until_complete(fail_fast=True)
    assert not stub_broker.dead_letters


def test_the_result_of_a_message_sent_on_commit(stub_broker: StubBroker) -> None:
    with transaction.atomic():
        Group.objects.create(name="with-result")
        message = count_groups.send_with_options_on_commit(args=("with-result",), store_results=True)
    run_until_complete(fail_fast=True)
    assert message.get_result(block=True, timeout=5000) == 1


def test_send_on_commit_enqueues_nothing_on_rollback(stub_broker: StubBroker) -> None:
    with pytest.raises(RuntimeError, match="roll back"), transaction.atomic():
        Group.objects.create(name="rolled-back")
        count_groups.send_on_commit("rolled-back")
        raise RuntimeError("roll back")
    assert queued(stub_broker) == 0
    assert not Group.objects.filter(name="rolled-back").exists()


def test_a_savepoint_rollback_drops_only_its_messages(stub_broker: StubBroker) -> None:
    with transaction.atomic():
        add.send_on_commit(1, 1)
        try:
            with transaction.atomic():
                add.send_on_commit(2, 2)
                raise ValueError("inner")
        except ValueError:
            pass
        assert queued(stub_broker) == 0
    assert queued(stub_broker) == 1
    run_until_complete()


def test_outside_a_transaction_it_sends_at_once(stub_broker: StubBroker) -> None:
    add.send_on_commit(1, 2)
    assert queued(stub_broker) == 1
    run_until_complete()


def test_bad_arguments_fail_at_once_not_at_commit(stub_broker: StubBroker) -> None:
    with transaction.atomic():
        with pytest.raises(TypeError):
            add.send_on_commit(object(), 1)
        Group.objects.create(name="still-commits")
    assert queued(stub_broker) == 0
    assert Group.objects.filter(name="still-commits").exists()


def test_delay_and_options_on_commit(stub_broker: StubBroker) -> None:
    with transaction.atomic():
        message = add.send_with_options_on_commit(args=(1, 2), delay=60_000)
    queue = stub_broker.queues["on_commit"]
    assert len(queue.delayed) == 1 and not queue.ready
    assert message.options == {}
    stub_broker.flush("on_commit")


def test_run_on_commit_for_a_pipeline_and_a_group(stub_broker: StubBroker) -> None:
    with transaction.atomic():
        Group.objects.create(name="composed")
        chain = pipeline([add.message(1, 2), add.message(10)]).run_on_commit()
        members = group([count_groups.message("composed"), add.message(3, 4)]).run_on_commit()
        assert queued(stub_broker) == 0
    assert queued(stub_broker) == 3  # the pipeline's first step and both members
    run_until_complete(fail_fast=True)
    assert chain.get_result(block=True, timeout=5000) == 13
    assert members.get_results(block=True, timeout=5000) == [1, 7]


def test_run_on_commit_enqueues_nothing_on_rollback(stub_broker: StubBroker) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        chain = pipeline([add.message(1, 2), add.message(10)]).run_on_commit()
        group([add.message(1, 1)]).run_on_commit()
        raise RuntimeError("roll back")
    assert queued(stub_broker) == 0
    assert chain.broker is stub_broker


def test_run_on_commit_checks_arguments_at_once(stub_broker: StubBroker) -> None:
    with transaction.atomic(), pytest.raises(TypeError):
        pipeline([add.message(1, 2), add.message(object())]).run_on_commit()
    assert queued(stub_broker) == 0


def test_using_follows_the_named_database() -> None:
    """``using=`` ties the message to that alias's transaction, not the default's."""
    script = """
import json
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_actors"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
               "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DJANGO_ACTORS={"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "RESULTS": None},
)
import django
django.setup()
from django.db import transaction
import django_actors

@django_actors.actor(queue_name="q")
def job(x):
    return x

broker = django_actors.get_broker()
size = lambda: len(broker.queues["q"]) if "q" in broker.queues else 0
report = {}
with transaction.atomic(using="other"):
    job.send_on_commit(1, using="other")
    with transaction.atomic():  # the default alias commits first
        job.send_on_commit(2)
    report["default_committed"] = size()
report["other_committed"] = size()
with transaction.atomic():
    job.send_on_commit(3, using="other")  # "other" is in autocommit: sent at once
    report["other_autocommit"] = size()
try:
    with transaction.atomic(using="other"):
        job.send_on_commit(4, using="other")
        raise RuntimeError
except RuntimeError:
    pass
report["other_rolled_back"] = size()
print(json.dumps(report))
"""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "default_committed": 1,
        "other_committed": 2,
        "other_autocommit": 3,
        "other_rolled_back": 3,
    }


@pytest.mark.parametrize("delay", ["soon", -1, [5]])
def test_a_bad_delay_fails_at_once_not_at_commit(stub_broker: StubBroker, delay: object) -> None:
    with transaction.atomic():
        with pytest.raises(ValueError, match="delay must be a non-negative number of milliseconds"):
            add.send_with_options_on_commit(args=(1, 2), delay=delay)  # type: ignore[arg-type]
        Group.objects.create(name="commits-anyway")
    assert queued(stub_broker) == 0
    assert Group.objects.filter(name="commits-anyway").exists()

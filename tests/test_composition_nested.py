"""Nested compositions: groups inside pipelines (chords), pipelines inside
groups, any depth; progress, failure, cancel and duplicates across levels.

Runs on the brokers of ``tests.test_composition.BROKERS``.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

import django_actors
from django_actors import composition, group, pipeline
from django_actors.message import Message
from django_actors.results import CompositionCancelled, ResultFailure
from tests import test_composition as base
from tests.test_composition import CallLog, wait_until

# The shared fixtures (parametrized over the brokers under test).
composition_broker = base.composition_broker
recorder = base.recorder
start_worker = base.start_worker
gates = base.gates


@pytest.fixture
def actors(composition_broker) -> dict[str, Any]:
    """Small arithmetic actors on the test's broker."""

    @django_actors.actor
    def num(x):
        return x

    @django_actors.actor
    def double(x):
        return 2 * x

    @django_actors.actor
    def inc(x):
        return x + 1

    @django_actors.actor
    def total(values):
        return sum(values)

    @django_actors.actor
    def echo(*args):
        return list(args)

    return {"num": num, "double": double, "inc": inc, "total": total, "echo": echo}


# Chords and nesting ----------------------------------------------------------------------


def test_a_group_inside_a_pipeline_hands_its_results_to_the_next_step(actors, start_worker, gates):
    num, echo, total = actors["num"], actors["echo"], actors["total"]

    @django_actors.actor
    def member(tag, value):
        if tag == "a":  # the first member finishes last
            assert gates["a"].wait(10)
        return f"{tag}:{value}"

    chord = num.message(7) | group([member.message("a"), member.message("b"), member.message("c")]) | echo.message()
    chord.run()
    start_worker()
    inner = chord.children[1]
    wait_until(lambda: inner.completed_count == 2, what="members b and c")
    assert chord.completed_count == 1
    gates["a"].set()
    assert chord.get_result(block=True, timeout=10_000) == [["a:7", "b:7", "c:7"]]
    assert chord.get_results() == [7, ["a:7", "b:7", "c:7"], [["a:7", "b:7", "c:7"]]]

    ignoring = num.message(1) | group([num.message_with_options(args=(i,), pipe_ignore=True) for i in (4, 5)])
    summed = (ignoring | total.message()).run()
    assert summed.get_results(block=True, timeout=10_000) == [1, [4, 5], 9]


def test_pipelines_of_groups_of_pipelines(actors, start_worker):
    num, double, inc, total = actors["num"], actors["double"], actors["inc"], actors["total"]
    p = (
        group([num.message(1) | double.message(), num.message(2) | double.message() | inc.message()])
        | total.message()
        | group([double.message(), inc.message() | double.message()])
    )
    assert len(p) == 3
    p.run()
    start_worker()
    assert p.get_results(block=True, timeout=10_000) == [[2, 5], 7, [14, 16]]
    assert p.get_result() == [14, 16]
    assert p.completed_count == 3


def test_groups_of_pipelines_of_groups(actors, start_worker):
    num, double, inc, total = actors["num"], actors["double"], actors["inc"], actors["total"]
    g = group(
        [
            num.message(1) | group([double.message(), inc.message()]) | total.message(),
            group([num.message(3), group([num.message(4), num.message(5)])]),
            num.message(6),
        ]
    )
    g.run()
    start_worker()
    assert g.get_results(block=True, timeout=10_000) == [4, [3, [4, 5]], 6]
    assert g.completed_count == 3


# A reference evaluator: random trees must give what plain function calls give.

_P = 1_000_003


def _digest(value: Any) -> int:
    if isinstance(value, list):
        return sum((i + 1) * _digest(v) for i, v in enumerate(value)) % _P
    return 0 if value is None else int(value) % _P


def _mix(tag: int, value: Any = None) -> int:
    return (tag * 7919 + _digest(value) * 31) % _P


def _random_tree(rng: random.Random, mix: Any, depth: int) -> Message[Any] | pipeline | group:
    roll = rng.random()
    if depth == 0 or roll < 0.3:
        return mix.message(rng.randrange(1000))
    size = rng.randrange(0 if roll > 0.9 else 1, 4)
    children = [_random_tree(rng, mix, depth - 1) for _ in range(size)]
    if roll < 0.65:
        return pipeline(children or [mix.message(rng.randrange(1000))])
    return group(children)


def _expected(node: Any, value: Any = None, has_value: bool = False) -> Any:
    if isinstance(node, Message):
        return _mix(*node.args, value) if has_value else _mix(*node.args)
    if isinstance(node, group):
        return [_expected(child, value, has_value) for child in node.children]
    for child in node.children:
        value, has_value = _expected(child, value, has_value), True
    return value


def test_random_nested_compositions_match_a_reference_evaluator(composition_broker, start_worker):
    @django_actors.actor
    def mix(tag, value=None):
        return _mix(tag, value)

    rng = random.Random(20240601)
    roots = []
    while len(roots) < 12:
        tree = _random_tree(rng, mix, depth=5)
        if not isinstance(tree, Message):
            roots.append(tree)
    for root in roots:
        root.run()
    start_worker(threads=8)
    for root in roots:
        if isinstance(root, pipeline):
            assert root.get_results(block=True, timeout=20_000) == [
                _expected(pipeline(root.children[: i + 1])) for i in range(len(root))
            ]
        else:
            assert root.get_results(block=True, timeout=20_000) == _expected(root)
        assert root.completed


# Empty groups ------------------------------------------------------------------------------


def test_empty_groups_inside_compositions(actors, start_worker):
    num, echo = actors["num"], actors["echo"]
    p = (num.message(1) | group([]) | echo.message()).run()
    g = group([num.message(2), group([]), group([group([])])]).run()
    start_worker()
    assert p.get_results(block=True, timeout=10_000) == [1, [], [[]]]
    assert g.get_results(block=True, timeout=10_000) == [2, [], [[]]]


def test_a_pipeline_of_2000_empty_groups_finishes_inside_run(stub_broker):
    # Advancing is iterative: 2,000 levels finish inside run(), over the
    # default recursion limit. (Backend-independent, so on the stub only.)
    p = pipeline([group([]) for _ in range(2_000)]).run()
    assert p.completed
    assert p.get_results() == [[]] * 2_000


# Progress ------------------------------------------------------------------------------------


def test_completed_count_counts_a_nested_member_once_it_has_entirely_finished(actors, start_worker, gates):
    num, inc = actors["num"], actors["inc"]
    started = CallLog()

    @django_actors.actor
    def hold(name, value=None):
        started.add(name)
        assert gates[name].wait(10)
        return value

    blocked_pipeline = num.message(3) | hold.message("p")
    blocked_group = group([num.message(4), hold.message("g")])
    g = group([num.message(1), num.message(2), blocked_pipeline, blocked_group, num.message(5) | inc.message()])
    outer = g | actors["echo"].message()
    outer.run()
    start_worker()
    wait_until(lambda: sorted(started.snapshot()) == ["g", "p"], what="both holds to start")
    wait_until(lambda: g.completed_count == 3, what="the three members that can finish")
    wait_until(lambda: blocked_pipeline.completed_count == 1 and blocked_group.completed_count == 1)
    # Six leaf messages have finished, but only three members have.
    assert g.completed_count == 3
    assert not g.completed
    assert outer.completed_count == 0

    gates["p"].set()
    wait_until(lambda: g.completed_count == 4, what="the nested pipeline")
    assert blocked_pipeline.completed
    assert not g.completed
    gates["g"].set()
    outer.wait(timeout=10_000)
    assert g.completed_count == 5
    assert outer.completed_count == 2
    assert outer.get_result() == [[1, 2, 3, [4, None], 6]]


def test_inner_compositions_are_readable_after_the_parent_ran(actors, start_worker):
    num, double = actors["num"], actors["double"]
    inner = group([double.message(), num.message_with_options(args=(9,), pipe_ignore=True)])
    outer = num.message(5) | double.message() | inner
    outer.run()
    with pytest.raises(RuntimeError, match="already ran"):
        inner.run()
    state = composition.progress(inner.id)
    assert state == {
        "id": inner.id,
        "kind": "group",
        "total": 2,
        "completed": 0,
        "status": "running",
        "error": None,
        "parent": outer.id,
        "root": outer.id,
    }
    start_worker()
    assert inner.get_results(block=True, timeout=10_000) == [20, 9]
    assert inner.completed
    assert composition.progress(inner.id)["status"] == "completed"
    assert outer.get_result(block=True, timeout=10_000) == [20, 9]


def test_a_composition_object_is_used_once(actors):
    num = actors["num"]
    g = group([num.message(1)])
    with pytest.raises(ValueError, match="appears twice"):
        pipeline([num.message(1), g, g]).run()
    with pytest.raises(ValueError, match="appears twice"):
        group([g, num.message(2) | g]).run()
    g.run()
    with pytest.raises(RuntimeError, match="already ran"):
        pipeline([num.message(1), g]).run()


# Duplicates --------------------------------------------------------------------------------


def test_a_duplicate_pipeline_step_does_not_fork_the_pipeline(actors, recorder, start_worker, composition_broker):
    num, inc = actors["num"], actors["inc"]
    p = num.message(1) | inc.message() | inc.message()
    p.run()
    composition_broker.enqueue(recorder.messages[0])
    worker = start_worker()
    assert p.get_result(block=True, timeout=10_000) == 3
    second = recorder.of("inc")[0]
    composition_broker.enqueue(second)  # a duplicate of a middle step, after the end
    worker.join(timeout=10_000)
    assert len(recorder.of("num")) == 2
    assert len(recorder.of("inc")) == 3, "each later step is sent once (plus the duplicate we sent)"
    assert p.get_results() == [1, 2, 3]


def test_nested_callbacks_fire_once_despite_duplicates(actors, recorder, start_worker, composition_broker):
    num, inc = actors["num"], actors["inc"]
    log = CallLog()

    @django_actors.actor
    def on_done(tag, *results):
        log.add((tag, list(results)))

    inner = group([num.message(1) | inc.message(), num.message(2)])
    inner.add_completion_callback(on_done.message("inner"))
    outer = group([inner, num.message(3) | inc.message() | inc.message()])
    outer.add_completion_callback(on_done.message("outer"), with_results=True)
    outer.run()
    first_wave = list(recorder.messages)
    for message in first_wave:
        composition_broker.enqueue(message)
    worker = start_worker()
    outer.wait(timeout=10_000)
    worker.join(timeout=10_000)
    later = [m for m in recorder.of("inc") if m not in first_wave]
    for message in later:  # duplicates of the later steps too
        composition_broker.enqueue(message)
    worker.join(timeout=10_000)
    assert sorted(log.snapshot()) == [("inner", []), ("outer", [[[2, 2], 5]])]
    assert outer.completed_count == 2
    assert inner.completed_count == 2


# Failure and cancel across levels ----------------------------------------------------------


def test_a_failure_deep_inside_fails_every_enclosing_composition(actors, start_worker):
    num = actors["num"]
    failures = CallLog()
    never = CallLog()

    @django_actors.actor(max_retries=0)
    def broken(value):
        raise KeyError(f"no {value}")

    @django_actors.actor
    def after(value):
        never.add(value)

    @django_actors.actor
    def on_failure(tag, error):
        failures.add((tag, error["type"]))

    inner_pipeline = num.message(3) | broken.message()
    inner = group([num.message(2), inner_pipeline])
    inner.add_failure_callback(on_failure.message("inner"))
    outer_group = group([inner | after.message(), num.message(9)])
    outer_group.add_failure_callback(on_failure.message("outer"))
    outer_group.run()
    worker = start_worker()
    start = time.monotonic()
    with pytest.raises(ResultFailure, match="KeyError"):
        outer_group.get_results(block=True, timeout=30_000)
    assert time.monotonic() - start < 5
    for part in (inner_pipeline, inner):
        with pytest.raises(ResultFailure, match="no 3"):
            part.wait(timeout=1_000)
        assert composition.progress(part.id)["status"] == "failed"
    wait_until(lambda: len(failures) == 2, what="both failure callbacks")
    worker.join(timeout=10_000)
    assert sorted(failures.snapshot()) == [("inner", "KeyError"), ("outer", "KeyError")]
    assert never.snapshot() == []


def test_cancelling_an_inner_group_cancels_its_ancestors(actors, start_worker, gates):
    num = actors["num"]
    ran = CallLog()
    started = threading.Event()

    @django_actors.actor
    def member(i, value=None):
        ran.add(i)
        if i == 0:
            started.set()
            assert gates["member"].wait(10)
        return i

    inner = group([member.message(i) for i in range(6)])
    outer = num.message(1) | inner | member.message(99)
    sibling = group([outer, num.message(2)])
    sibling.run()
    worker = start_worker(threads=1)
    assert started.wait(10)
    assert composition.cancel(inner.id) is True
    for part in (inner, outer, sibling):
        with pytest.raises(CompositionCancelled):
            part.wait(timeout=5_000)
    gates["member"].set()
    worker.join(timeout=10_000)
    assert ran.snapshot() == [0]
    assert composition.progress(sibling.id)["status"] == "cancelled"
    assert sibling.completed_count == 1, "the sibling member still ran"


def test_cancelling_the_root_skips_queued_nested_members(actors, start_worker, gates):
    ran = CallLog()
    started = threading.Event()

    @django_actors.actor
    def step(tag, value=None):
        ran.add(tag)
        if tag == "hold":
            started.set()
            assert gates["hold"].wait(10)
        return tag

    # One worker thread: "x" and "z" wait in the queue while "hold" runs.
    nested = group([step.message("z")])
    root = group([step.message("hold"), step.message("x") | step.message("y"), nested])
    root.run()
    worker = start_worker(threads=1)
    assert started.wait(10)
    assert root.cancel() is True
    gates["hold"].set()
    worker.join(timeout=10_000)
    with pytest.raises(CompositionCancelled):
        root.get_results()
    assert ran.snapshot() == ["hold"]
    assert nested.completed_count == 0
    assert composition.progress(nested.id)["status"] == "running", "cancelled through its root only"
    assert not nested.cancelled


def test_cancelling_a_pipeline_does_not_launch_its_next_group(actors, start_worker, gates, recorder):
    started = threading.Event()

    @django_actors.actor
    def hold():
        started.set()
        assert gates["hold"].wait(10)
        return 1

    root = hold.message() | group([actors["inc"].message() for _ in range(50)]) | actors["echo"].message()
    root.run()
    worker = start_worker()
    assert started.wait(10)
    root.cancel()
    gates["hold"].set()
    wait_until(lambda: root.completed_count == 1, what="the running step to finish")
    worker.join(timeout=10_000)
    assert recorder.of("inc") == [], "nothing of a cancelled pipeline is sent"

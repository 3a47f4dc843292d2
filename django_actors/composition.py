"""Composition: pipelines (sequential) and groups (parallel), nested at will.

How it works
------------
``run()`` walks the whole composition once. In one call to the results
backend it writes a record per composition, nested ones included (``meta``:
kind, size, parent link, path of enclosing ids, callbacks), and a *launch
spec* for every pipeline step after the first. Then it enqueues the first
messages, in batches of :data:`BATCH_SIZE`. Every member message carries
``options["composition"] = {"id", "pos", "path"}``: the composition it
belongs to, its position there, and the ids of all enclosing compositions,
root first. That is constant in size, however long the pipeline.

When a member finishes, the Pipelines middleware records its result and adds
its position to the composition's completion set in one atomic step
(``_add_member``). The delivery that *added* the position (a duplicate
delivery of the same message finds it already there) acts: a pipeline sends
its next step, a group whose set just became full fires its completion
callbacks. Each action is then marked done. A duplicate delivery that finds
no mark waits up to :data:`RECOVERY_WAIT` ms for it: the first delivery is
either still busy (and will mark it) or died mid-way, and then the duplicate
(normally the redelivery of that same message) claims and finishes the job.
A finished composition reports to its parent the same way, so nesting of any
depth works: a group inside a pipeline hands the list of its results to the
next step (a chord).

``completed_count`` is the size of the completion set: one round trip, for
10 members or 10,000, and a nested member counts only once it has finished
entirely. A member that fails for good marks its composition and every
enclosing one failed (first failure wins), so waiting callers get
:class:`ResultFailure` at once, and groups' failure callbacks fire once.
``cancel()`` stores a flag that members check before they start, and marks
the composition and its ancestors cancelled (:class:`CompositionCancelled`).

Brokers without a results backend keep dramatiq's behaviour: a pipeline of
plain messages nests each next step in the ``pipe_target`` option, a group
without callbacks just sends its messages.

Records
-------
Keys are ``{backend.namespace}:c:{composition_id}:{suffix}`` (the admin
mirror reads them too), all kept for ``COMPOSITION_TTL``:

``meta``          ``{"k": "p"|"g", "n": size, "up": [parent_id, position] | None,
                  "path": [root_id, ..., id], "cb", "cbr", "fcb": callbacks}``
``s:{k}``         launch spec of pipeline step ``k`` (k >= 1)
``done``          completion set: positions of the children that finished
``r:{k}``         ``{"r": result}`` of child ``k``
``end``           ``{"r": True}`` finished, or ``{"e": {"type", "message"}}``
                  failed (type ``"Cancelled"``: cancelled)
``cancel``        present once cancelled (members check it before starting)
``failed``        set of the children that failed (the first one wins)
``did:{action}``  done marks (``adv:{k}``, ``adv``, ``fail``); ``claim:{action}``
                  the claim a recovering delivery takes
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from .broker import Broker, NoResultsBackend, get_broker
from .errors import MessageTooLarge
from .message import Message, delay_ms
from .middleware.middleware import SkipMessage, get_option
from .results.backend import COMPOSITION_TTL, DEFAULT_RESULT_TTL, failure_record, unwrap
from .results.errors import ResultError, ResultMissing, ResultTimeout

if TYPE_CHECKING:
    from .broker import MessageProxy
    from .middleware.group_callbacks import GroupCallbacks
    from .results.backend import ResultBackend

logger = logging.getLogger(__name__)

#: The message option that carries composition membership.
OPTION = "composition"
#: How many messages go to the broker per ``enqueue_many`` call.
BATCH_SIZE = 1000
#: How long a duplicate delivery waits for the first delivery to finish
#: advancing a composition before it takes over (milliseconds).
RECOVERY_WAIT = 10_000
#: The failure type stored for cancelled compositions.
CANCELLED = "Cancelled"
#: The option that marks a group's completion or failure callback: the group's id.
CALLBACK_OPTION = "composition_callback"

#: Errors that advancing a composition will hit again on every attempt (a
#: result that cannot be encoded, a next message over the size limit...).
_DETERMINISTIC = (TypeError, ValueError, MessageTooLarge)

_NOTHING: Any = object()

#: A completion event: (kind, composition id, position, result, path).
_Item = tuple[str, str, int, Any, list[str]]


class CompositionNotFound(ResultError, LookupError):
    """No composition with this id: it never ran on this results backend, or
    its records expired."""


def _new_id() -> str:
    return uuid.uuid4().hex


def _key(backend: ResultBackend, composition_id: str, suffix: str) -> str:
    return f"{backend.namespace}:c:{composition_id}:{suffix}"


def _ttl(backend: ResultBackend) -> int:
    return int(getattr(backend, "composition_ttl", COMPOSITION_TTL))


def _kind_name(kind: str) -> str:
    return "pipeline" if kind == "p" else "group"


def _enqueue(broker: Broker, messages: Sequence[Message[Any]], delay: int | None = None) -> None:
    """Enqueue ``messages`` in batches: one broker round trip per batch (and
    per distinct delay, see :func:`_by_delay`)."""
    for wait, same in _by_delay(messages, delay):
        for start in range(0, len(same), BATCH_SIZE):
            broker.enqueue_many(same[start : start + BATCH_SIZE], delay=wait)


def _by_delay(messages: Sequence[Message[Any]], delay: int | None) -> list[tuple[int | None, Sequence[Message[Any]]]]:
    """Split ``messages`` by how long each waits: the larger of ``delay`` and
    its own ``delay`` option (milliseconds), as dramatiq's pipelines do.

    Raises:
      ValueError: a message's ``delay`` option is not a non-negative number.
    """
    if not any("delay" in message.options for message in messages):
        return [(delay, messages)]
    buckets: dict[int | None, list[Message[Any]]] = {}
    for message in messages:
        own = _check_delay(message.options.get("delay"))
        wait = max(delay or 0, own or 0) or None
        buckets.setdefault(wait, []).append(message)
    return list(buckets.items())


def _check_encodable(broker: Broker, messages: Iterable[Message[Any]]) -> None:
    """Encode every message once so that a bad one fails before anything is sent.

    Raises:
      TypeError: a message cannot be encoded (the text names the argument).
      MessageTooLarge: a message is over the broker's ``max_message_size``.
    """
    for message in messages:
        size = len(message.encode())
        if size > broker.max_message_size:
            raise MessageTooLarge(
                f"Message for actor {message.actor_name!r} is {size} bytes encoded, "
                f"over the limit of {broker.max_message_size} bytes."
            )


def _check_delay(delay: Any) -> int | None:
    return None if delay is None else delay_ms(delay)


class _Composition:
    """Shared behaviour of pipelines and groups."""

    kind = ""
    children: list[Any]

    def __init__(self, broker: Broker | None) -> None:
        self._broker = broker
        #: The composition's id, carried by its messages.
        self.id = _new_id()
        self._ran = False
        self._scheduled = False

    @property
    def broker(self) -> Broker:
        """The broker the composition runs on (the global one unless given)."""
        return self._broker or get_broker()

    @property
    def backend(self) -> ResultBackend:
        """The broker's results backend.

        Raises:
          NoResultsBackend: the broker has no Results middleware.
        """
        return self.broker.get_results_backend()

    def __len__(self) -> int:
        return len(self.children)

    # Running ----------------------------------------------------------------------------

    def run(self, *, delay: int | None = None) -> Self:
        """Send the composition's first messages.

        Parameters:
          delay: milliseconds to wait before the first messages run.

        Returns:
          The composition itself.

        Raises:
          RuntimeError: it already ran (build a new one to run it again).
          ValueError: a pipeline in it is empty, or a composition appears twice.
          TypeError: a message cannot be encoded; nothing is sent.
          MessageTooLarge: a message is too large; nothing is sent.
          NoResultsBackend: the broker has no results backend and the
            composition needs one (nesting, callbacks).
        """
        if self._ran or self._scheduled:
            raise RuntimeError(f"This {self.kind} already ran; build a new one to run it again.")
        return self._run(_check_delay(delay))

    def _run(self, delay: int | None) -> Self:
        broker = self.broker
        if not broker.has_results_backend():
            self._run_without_backend(broker, delay)
            self._ran = True
            return self
        backend = broker.get_results_backend()
        plan = _Plan(backend)
        spec = plan.add(self, None, [])
        messages: list[Message[Any]] = []
        empty: list[tuple[str, list[str]]] = []
        _collect(broker, spec, _NOTHING, [], messages, empty)
        # Every message is encoded (and checked) once, before anything is
        # stored or sent; the encodings are what is sent.
        batches = [(broker._prepare_many(same, wait), wait) for wait, same in _by_delay(messages, delay)]
        backend._store_many(plan.records, _ttl(backend))
        for (prepared, eta), wait in batches:
            broker._send_prepared(prepared, eta, wait)  # the broker sends them in chunks of its own
        for composition in plan.compositions:
            composition._ran = True
        if empty:
            _advance(broker, backend, [("empty", gid, 0, None, path) for gid, path in empty], f"run:{self.id}")
        return self

    def _run_without_backend(self, broker: Broker, delay: int | None) -> None:
        """dramatiq's behaviour for brokers without a results backend."""
        raise NotImplementedError

    def run_on_commit(self, *, delay: int | None = None, using: str | None = None) -> Self:
        """Run once the current database transaction commits (at once outside one).

        Every message is encoded now, so bad arguments fail here and nothing
        is sent if the transaction rolls back.

        Parameters:
          delay: milliseconds to wait before the first messages run.
          using: the database alias whose transaction to follow.

        Raises:
          RuntimeError: it already ran or is already scheduled.
          TypeError: a message cannot be encoded.
        """
        from django.db import transaction

        if self._ran or self._scheduled:
            raise RuntimeError(f"This {self.kind} already ran; build a new one to run it again.")
        checked_delay = _check_delay(delay)
        _check_encodable(self.broker, self._leaf_messages())
        self._scheduled = True
        transaction.on_commit(lambda: self._run(checked_delay), using=using)
        return self

    def _leaf_messages(self) -> list[Message[Any]]:
        found: list[Message[Any]] = []
        for child in self.children:
            if isinstance(child, Message):
                found.append(child)
            else:
                found.extend(child._leaf_messages())
        return found

    # Reading progress -----------------------------------------------------------------

    @property
    def completed_count(self) -> int:
        """How many children finished (a nested composition counts once it
        has finished entirely). One round trip, whatever the size."""
        backend = self.backend
        return backend._count_members([_key(backend, self.id, "done")])[0]

    @property
    def completed(self) -> bool:
        """Whether every child finished."""
        return self.completed_count >= len(self)

    def progress(self) -> dict[str, Any]:
        """This composition's progress: see :func:`progress`."""
        return progress(self.id, broker=self.broker)

    def _end(self, *, block: bool, timeout: int | None) -> None:
        backend = self.backend
        key = _key(backend, self.id, "end")
        record = backend.wait(key, timeout=timeout) if block else backend._get(key)
        if record is None:
            if block:
                raise ResultTimeout(f"Timed out waiting for {self.kind} {self.id}.")
            raise ResultMissing(f"The {self.kind} {self.id} has not finished yet.")
        unwrap(record, f"The {self.kind} {self.id}")

    def _child_results(self, positions: Iterable[int]) -> list[Any]:
        backend = self.backend
        positions = list(positions)
        records = backend._get_many([_key(backend, self.id, f"r:{i}") for i in positions])
        return [record.get("r") if record else None for record in records]

    def wait(self, *, timeout: int | None = None) -> None:
        """Block until the composition finishes.

        Parameters:
          timeout: milliseconds (default 10 s).

        Raises:
          ResultTimeout: the timeout ran out.
          ResultFailure: a member failed for good.
          CompositionCancelled: it was cancelled.
        """
        self._end(block=True, timeout=timeout)

    def cancel(self) -> bool:
        """Cancel: members that have not started are skipped, and callers
        waiting on this composition (or an enclosing one) get
        :class:`CompositionCancelled`.

        Returns:
          ``False`` when it had already finished, failed or been cancelled.

        Raises:
          RuntimeError: it has not run.
        """
        if not self._ran:
            raise RuntimeError(f"This {self.kind} has not run; there is nothing to cancel.")
        return cancel(self.id, broker=self.broker)

    @property
    def cancelled(self) -> bool:
        """Whether the composition was cancelled."""
        backend = self.backend
        return backend._get(_key(backend, self.id, "cancel")) is not None

    def __or__(self, other: Message[Any] | pipeline | group) -> pipeline:
        return pipeline([self, other], broker=self._broker)  # type: ignore[list-item]


def _chain(steps: Sequence[Message[Any]], last_options: dict[str, Any] | None = None) -> list[Message[Any]]:
    """Copies of ``steps``, each carrying the next one (as a dict) in its
    ``pipe_target`` option; ``last_options`` are added to the last one."""
    chained: list[Message[Any]] = []
    target: dict[str, Any] | None = None
    for step in reversed(steps):
        options = dict(step.options)
        if target is None and last_options:
            options.update(last_options)
        if target is not None:
            options["pipe_target"] = target
        message = step.copy(options=options)
        chained.append(message)
        target = message.asdict()
    chained.reverse()
    return chained


def _check_child(child: Any, what: str) -> None:
    if not isinstance(child, Message | pipeline | group):
        raise TypeError(
            f"A {what} takes messages, pipelines and groups, not {type(child).__name__}: "
            "build messages with actor.message(...)."
        )


def _check_children(children: Any, what: str) -> None:
    if isinstance(children, Message | _Composition) or not isinstance(children, Iterable):
        raise TypeError(f"A {what} takes an iterable of children, not {type(children).__name__}.")


class pipeline(_Composition):  # noqa: N801 - dramatiq's name
    """Run messages (or groups) one after the other; each step receives the
    previous step's result as its last positional argument, unless it has
    the ``pipe_ignore`` option. A group step receives it too (every member
    does) and hands the list of its results, in member order, to the next.

    Parameters:
      children: messages, pipelines (flattened into this one) and groups.
      broker: the broker; the global one when ``None``.

    Raises:
      TypeError: a child is not a message, pipeline or group.
    """

    kind = "pipeline"

    def __init__(self, children: Iterable[Message[Any] | pipeline | group], *, broker: Broker | None = None) -> None:
        super().__init__(broker)
        _check_children(children, "pipeline")
        self.children: list[Message[Any] | group] = []
        for child in children:
            _check_child(child, "pipeline")
            if isinstance(child, pipeline):
                self.children.extend(child.children)
            else:
                self.children.append(child)

    @property
    def pipeline_id(self) -> str:
        """The pipeline's id (carried by its messages)."""
        return self.id

    @property
    def messages(self) -> list[Message[Any]]:
        """The pipeline's messages, in order (a group step contributes its own).

        When every step is a message, each one carries the next in its
        ``pipe_target`` option, as in dramatiq (and as they are sent on a
        broker without a results backend); with a results backend ``run()``
        sends them without it, each carrying only its composition's id.
        """
        if all(isinstance(child, Message) for child in self.children):
            return _chain(self.children)  # type: ignore[arg-type]
        return self._leaf_messages()

    def __or__(self, other: Message[Any] | pipeline | group) -> pipeline:
        _check_child(other, "pipeline")
        return pipeline([*self.children, other], broker=self._broker)

    def get_result(self, *, block: bool = False, timeout: int | None = None) -> Any:
        """Return the result of the last step.

        Parameters:
          block: wait for the pipeline to finish.
          timeout: how long to wait, in milliseconds (default 10 s).

        Raises:
          ResultMissing: not blocking, and the pipeline has not finished.
          ResultTimeout: blocking, and the timeout ran out.
          ResultFailure: a step failed for good (CompositionCancelled: cancelled).
        """
        self._end(block=block, timeout=timeout)
        return self._child_results([len(self) - 1])[0]

    def get_results(self, *, block: bool = False, timeout: int | None = None) -> list[Any]:
        """Return every step's result, in order (a group step's is a list).

        Raises:
          ResultMissing, ResultTimeout, ResultFailure: as :meth:`get_result`.
        """
        self._end(block=block, timeout=timeout)
        return self._child_results(range(len(self)))

    def _run_without_backend(self, broker: Broker, delay: int | None) -> None:
        first = self._chained(broker)
        [(wait, _)] = _by_delay([first], delay)
        broker.enqueue(first, delay=wait)

    def _chained(self, broker: Broker, last_options: dict[str, Any] | None = None) -> Message[Any]:
        """dramatiq's form of the pipeline, for brokers without a results
        backend: its first message, each step nesting the next in its
        ``pipe_target`` option. ``last_options`` are added to the last step.

        Raises:
          NoResultsBackend: a step is a group.
          ValueError: the pipeline is empty, or nests too deeply to encode.
          TypeError, MessageTooLarge: a message cannot be sent.
        """
        if not all(isinstance(child, Message) for child in self.children):
            raise NoResultsBackend("A pipeline with a group step needs a results backend: add the Results middleware.")
        if not self.children:
            raise ValueError("A pipeline needs at least one step.")
        first = _chain(self.children, last_options)[0]  # type: ignore[arg-type]
        try:
            _check_encodable(broker, [first])
        except RecursionError:
            raise ValueError(
                f"A pipeline of {len(self)} steps nests too deeply to encode without a results backend "
                "(each step carries the rest in 'pipe_target'): add the Results middleware, "
                "which keeps every message small."
            ) from None
        return first

    def __repr__(self) -> str:
        return f"pipeline({self.id}, {len(self)} steps)"


class group(_Composition):  # noqa: N801 - dramatiq's name
    """Run messages, pipelines and groups in parallel.

    Parameters:
      children: messages, pipelines and groups.
      broker: the broker; the global one when ``None``.

    Raises:
      TypeError: a child is not a message, pipeline or group.
    """

    kind = "group"

    def __init__(self, children: Iterable[Message[Any] | pipeline | group], *, broker: Broker | None = None) -> None:
        super().__init__(broker)
        _check_children(children, "group")
        self.children: list[Message[Any] | pipeline | group] = []
        for child in children:
            _check_child(child, "group")
            self.children.append(child)
        self.callbacks: list[tuple[Message[Any], bool]] = []
        self.failure_callbacks: list[Message[Any]] = []

    @property
    def group_id(self) -> str:
        """The group's id (carried by its messages)."""
        return self.id

    def _check_callback(self, message: Any, what: str) -> None:
        if not isinstance(message, Message):
            raise TypeError(f"A {what} callback must be a message, not {type(message).__name__}.")
        if self._ran or self._scheduled:
            raise RuntimeError(f"Add {what} callbacks before the group runs.")

    def add_completion_callback(self, message: Message[Any], *, with_results: bool = False) -> None:
        """Send ``message`` once every member has finished: exactly once, also
        when a member is delivered twice.

        Parameters:
          message: the message to send.
          with_results: append the list of the members' results (in member
            order) to the message's positional arguments.

        Raises:
          TypeError: ``message`` is not a message.
          RuntimeError: the group already ran.
        """
        self._check_callback(message, "completion")
        self.callbacks.append((message, with_results))

    def add_failure_callback(self, message: Message[Any]) -> None:
        """Send ``message`` once if a member (or a nested member) fails for
        good. It receives ``{"type": ..., "message": ...}`` describing the
        first failure as its last positional argument. Cancelling does not
        fire it.

        Raises:
          TypeError: ``message`` is not a message.
          RuntimeError: the group already ran.
        """
        self._check_callback(message, "failure")
        self.failure_callbacks.append(message)

    def get_results(self, *, block: bool = False, timeout: int | None = None) -> list[Any]:
        """Return the members' results, in member order (a nested pipeline's
        is its last step's result, a nested group's a list).

        Parameters:
          block: wait for the group to finish.
          timeout: how long to wait, in milliseconds (default 10 s).

        Raises:
          ResultMissing: not blocking, and the group has not finished.
          ResultTimeout: blocking, and the timeout ran out.
          ResultFailure: a member failed for good (CompositionCancelled: cancelled).
        """
        self._end(block=block, timeout=timeout)
        return self._child_results(range(len(self)))

    def _run_without_backend(self, broker: Broker, delay: int | None) -> None:
        """dramatiq's behaviour: send the members (a member pipeline as its
        chained first message); completion callbacks need the GroupCallbacks
        middleware, which counts members on a rate-limiter backend."""
        member_options: dict[str, Any] | None = None
        if self.failure_callbacks:
            raise NoResultsBackend("Group failure callbacks need a results backend: add the Results middleware.")
        if self.callbacks:
            if any(with_results for _, with_results in self.callbacks):
                raise NoResultsBackend(
                    "Completion callbacks with_results=True need a results backend: add the Results middleware."
                )
            counter = _group_callbacks(broker)
            if counter is None:
                raise NoResultsBackend(
                    "Group completion callbacks need the Results middleware (a results backend) "
                    "or the GroupCallbacks middleware (a rate-limiter backend)."
                )
            if not self.children:
                raise ValueError("A group with completion callbacks needs at least one member.")
            member_options = counter.member_options(self.id, len(self), [m.asdict() for m, _ in self.callbacks])
        if any(isinstance(child, group) for child in self.children):
            raise NoResultsBackend("A group of groups needs a results backend: add the Results middleware.")
        firsts: list[Message[Any]] = []
        for child in self.children:
            if isinstance(child, pipeline):
                firsts.append(child._chained(broker, member_options))
            elif member_options:
                firsts.append(child.copy(options={**child.options, **member_options}))  # type: ignore[union-attr]
            else:
                firsts.append(child)  # type: ignore[arg-type]
        batches = [(broker._prepare_many(same, wait), wait) for wait, same in _by_delay(firsts, delay)]
        for (prepared, eta), wait in batches:  # all encoded before any is sent
            broker._send_prepared(prepared, eta, wait)
        for child in self.children:
            if isinstance(child, pipeline):
                child._ran = True

    def __repr__(self) -> str:
        return f"group({self.id}, {len(self)} members)"


# Planning (client side) -------------------------------------------------------------


class _Plan:
    """Collects the records ``run()`` stores: a meta record per composition
    and a launch spec per pipeline step after the first.

    A launch spec is ``{"m": message}`` (membership option included; the
    :class:`Message` here, its dict form once stored), ``{"p": id, "f": spec
    of step 0}`` or ``{"g": id, "c": [specs]}``.
    """

    def __init__(self, backend: ResultBackend) -> None:
        self.backend = backend
        self.records: dict[str, Any] = {}
        self.compositions: list[_Composition] = []
        self._seen: set[str] = set()

    def add(self, composition: _Composition, up: list[Any] | None, path: list[str]) -> dict[str, Any]:
        """Plan ``composition`` (recursion depth = nesting depth) and return its launch spec."""
        if composition.id in self._seen:
            raise ValueError(f"{composition!r} appears twice in the composition; build a new one for each use.")
        if up is not None and (composition._ran or composition._scheduled):
            raise RuntimeError(f"{composition!r} already ran; build a new one to use it again.")
        self._seen.add(composition.id)
        self.compositions.append(composition)
        backend, cid = self.backend, composition.id
        inner = [*path, cid]
        if isinstance(composition, pipeline):
            if not composition.children:
                raise ValueError(f"{composition!r} is empty: a pipeline needs at least one step.")
            self.records[_key(backend, cid, "meta")] = {"k": "p", "n": len(composition), "up": up, "path": inner}
            first = None
            for position, child in enumerate(composition.children):
                spec = self.child(child, [cid, position], inner)
                if position == 0:
                    first = spec
                else:
                    self.records[_key(backend, cid, f"s:{position}")] = _stored(spec)
            return {"p": cid, "f": first}
        assert isinstance(composition, group)
        self.records[_key(backend, cid, "meta")] = {
            "k": "g",
            "n": len(composition),
            "up": up,
            "path": inner,
            "cb": [m.asdict() for m, with_results in composition.callbacks if not with_results],
            "cbr": [m.asdict() for m, with_results in composition.callbacks if with_results],
            "fcb": [m.asdict() for m in composition.failure_callbacks],
        }
        return {"g": cid, "c": [self.child(child, [cid, i], inner) for i, child in enumerate(composition.children)]}

    def child(self, child: Message[Any] | pipeline | group, up: list[Any], path: list[str]) -> dict[str, Any]:
        if isinstance(child, Message):
            # The member message itself (a copy with its membership option):
            # run() sends it as it is; _stored() turns it into its dict form
            # where the spec is stored.
            member: Message[Any] = Message(
                queue_name=child.queue_name,
                actor_name=child.actor_name,
                args=child.args,
                kwargs=child.kwargs,
                options={**child.options, OPTION: {"id": up[0], "pos": up[1], "path": path}},
                message_id=child.message_id,
                message_timestamp=child.message_timestamp,
            )
            return {"m": member}
        return self.add(child, up, path)


def _stored(spec: dict[str, Any]) -> dict[str, Any]:
    """A launch spec as stored: its messages in their dict form."""
    if "m" in spec:
        message = spec["m"]
        return {"m": message.asdict() if isinstance(message, Message) else message}
    if "p" in spec:
        return {"p": spec["p"], "f": _stored(spec["f"])}
    return {"g": spec["g"], "c": [_stored(child) for child in spec["c"]]}


def _ignores_input(broker: Broker, message: Message[Any]) -> bool:
    return bool(get_option(broker, message, "pipe_ignore", False))


def _collect(
    broker: Broker,
    spec: dict[str, Any],
    value: Any,
    path: list[str],
    messages: list[Message[Any]],
    empty: list[tuple[str, list[str]]],
) -> None:
    """Gather the messages that start ``spec``, with ``value`` (the previous
    step's result) appended to their arguments, and the empty groups in it.

    A spec planned by ``run()`` holds its messages; one read back from the
    backend holds their dict form, which is validated.
    """
    if "m" in spec:
        data = spec["m"]
        message = data if isinstance(data, Message) else Message.from_dict(data)
        if value is not _NOTHING and not _ignores_input(broker, message):
            message = message.copy(args=(*message.args, value))
        messages.append(message)
    elif "p" in spec:
        _collect(broker, spec["f"], value, [*path, spec["p"]], messages, empty)
    else:
        inner = [*path, spec["g"]]
        if not spec["c"]:
            empty.append((spec["g"], inner))
        for child in spec["c"]:
            _collect(broker, child, value, inner, messages, empty)


# Worker side -----------------------------------------------------------------------


def check_cancelled(broker: Broker, message: MessageProxy) -> None:
    """Skip a member whose composition (or an enclosing one) was cancelled.

    Raises:
      SkipMessage: it was cancelled.
    """
    if message.options.get(CALLBACK_OPTION):
        _check_callback_once(broker, message)
    membership = message.options.get(OPTION)
    if not membership or not broker.has_results_backend():
        return
    backend = broker.get_results_backend()
    path = membership["path"]
    flags = backend._get_many([_key(backend, cid, "cancel") for cid in path])
    cancelled = [cid for cid, flag in zip(path, flags, strict=True) if flag is not None]
    if not cancelled:
        return
    reason = f"composition {cancelled[0]} was cancelled"
    _store_member_failure(broker, backend, message, {"e": {"type": CANCELLED, "message": reason}})
    raise SkipMessage(f"Message {message.message_id} skipped: {reason}.")


def _check_callback_once(broker: Broker, message: MessageProxy) -> None:
    """Skip a group callback that was enqueued a second time.

    A delivery that dies between enqueueing a group's callbacks and marking
    that done is taken over, and the callbacks are enqueued again. The broker
    handle (``tag``: Redis member, row id) is the same for every redelivery of
    one enqueued message and differs for a second enqueue: the first handle
    to run claims the callback, a second enqueue is skipped, a redelivery runs.

    Raises:
      SkipMessage: another enqueue of this callback already ran.
    """
    if not broker.has_results_backend():
        return
    backend = broker.get_results_backend()
    group_id = str(message.options[CALLBACK_OPTION])
    key = _key(backend, group_id, f"cbrun:{message.message_id}")
    if not backend._claim(key, str(message.tag), _ttl(backend)):
        raise SkipMessage(f"Callback {message.message_id} of group {group_id} already ran: a second enqueue, skipped.")


def _as_callback(message: Message[Any], group_id: str) -> Message[Any]:
    return message.copy(options={**message.options, CALLBACK_OPTION: group_id})


def _store_member_failure(broker: Broker, backend: ResultBackend, message: MessageProxy, record: Any) -> None:
    """Store ``record`` as a skipped member's result when its actor stores
    results, so a caller waiting on the message itself does not hang."""
    from .results.middleware import Results

    for middleware in broker.middleware:
        if isinstance(middleware, Results) and middleware.backend is backend:
            if get_option(broker, message, "store_results", middleware.store_results):
                ttl = get_option(broker, message, "result_ttl", middleware.result_ttl) or DEFAULT_RESULT_TTL
                backend._store_many({backend.build_message_key(message.message): record}, ttl)
            return


def on_message_done(broker: Broker, message: MessageProxy, result: Any) -> None:
    """Advance the composition a finished message belongs to."""
    options = message.options
    target = options.get("pipe_target")
    if target:
        _send_pipe_target(broker, target, result)
        return
    membership = options.get(OPTION)
    if not membership:
        return
    backend = broker.get_results_backend()
    item = ("done", membership["id"], membership["pos"], result, membership["path"])
    _advance(broker, backend, [item], message.message_id)


def on_message_failed(broker: Broker, message: MessageProxy) -> None:
    """Mark the compositions of a message that failed for good as failed."""
    membership = message.options.get(OPTION)
    if not membership or not broker.has_results_backend():
        return
    backend = broker.get_results_backend()
    exception = message.exception
    record = failure_record(exception, str(exception) if exception is not None else message.fail_reason)
    _fail(broker, backend, membership["id"], membership["pos"], record, message.message_id)


def _once(backend: ResultBackend, composition_id: str, what: str, first: bool, token: str, ttl: int) -> bool:
    """Whether this delivery performs the action ``what`` of a composition.

    ``first`` tells whether this delivery recorded the event that triggers
    the action (only one delivery can): it acts. Any other delivery waits for
    the action's done mark; if it never comes the first delivery died, and a
    claim lets one of the others (its redelivery, normally) finish the job.
    """
    if first:
        return True
    did = _key(backend, composition_id, f"did:{what}")
    if backend._get(did) is not None or backend.wait(did, timeout=RECOVERY_WAIT) is not None:
        return False
    logger.warning("Composition %s: taking over %r from a delivery that did not finish it.", composition_id, what)
    return backend._claim(_key(backend, composition_id, f"claim:{what}"), token, ttl)


def _advance(broker: Broker, backend: ResultBackend, items: list[_Item], token: str) -> None:
    """Process completion events, iteratively (no recursion, whatever the
    length or depth of the composition).

    Items are ``("done", composition_id, position, result, path)``: child
    ``position`` finished with ``result``; or ``("empty", group_id, 0, None,
    path)``: an empty group was launched. ``path`` holds the enclosing ids,
    the composition's own last.
    """
    ttl = _ttl(backend)
    while items:
        kind, cid, position, result, path = items.pop()
        try:
            _advance_one(broker, backend, kind, cid, position, result, path, token, ttl, items)
        except _DETERMINISTIC as exc:
            logger.error("Composition %s cannot go on: %s", cid, exc)
            _fail(broker, backend, cid, position, failure_record(exc, f"cannot go on: {exc}"), token)


def _advance_one(
    broker: Broker,
    backend: ResultBackend,
    kind: str,
    cid: str,
    position: int,
    result: Any,
    path: list[str],
    token: str,
    ttl: int,
    items: list[_Item],
) -> None:
    # One round trip: the record, the end marker, the next step's spec (if
    # this is a pipeline) and the cancel flags of every enclosing composition.
    keys = [_key(backend, cid, "meta"), _key(backend, cid, "end"), _key(backend, cid, f"s:{position + 1}")]
    keys += [_key(backend, ancestor, "cancel") for ancestor in path]
    meta, end, spec, *flags = backend._get_many(keys)
    if meta is None:
        logger.warning("Composition %s has no record (expired?); not advancing it.", cid)
        return
    if kind == "empty":
        added, count = True, 0
    else:
        added, count = backend._add_member(
            _key(backend, cid, "done"), position, ttl, {_key(backend, cid, f"r:{position}"): {"r": result}}
        )
    if any(flag is not None for flag in flags) or (end is not None and "e" in end):
        return  # cancelled or failed: nothing more happens
    if end is not None:
        # Already finished: a late duplicate, or the redelivery of a message
        # whose delivery died before reporting to the parent. Reporting again
        # is harmless (the parent counts each child once) and recovers that.
        if meta["up"] is not None:
            final = result if meta["k"] == "p" and position == meta["n"] - 1 else _final(backend, cid, meta)
            items.append(("done", meta["up"][0], meta["up"][1], final, path[:-1]))
        return
    if meta["k"] == "p":
        what = f"adv:{position}"
        if not _once(backend, cid, what, added, token, ttl):
            return
        if position + 1 < meta["n"]:
            messages: list[Message[Any]] = []
            empty: list[tuple[str, list[str]]] = []
            _collect(broker, spec, result, path, messages, empty)
            _enqueue(broker, messages)
            backend._store_many({_key(backend, cid, f"did:{what}"): True}, ttl)
            items.extend(("empty", gid, 0, None, inner) for gid, inner in empty)
            return
        final = result
    else:
        if count < meta["n"]:
            return
        what = "adv"
        if not _once(backend, cid, what, added, token, ttl):
            return
        final = _final(backend, cid, meta) if meta["up"] is not None or meta["cbr"] else None
        callbacks = [Message.from_dict(data) for data in meta["cb"]]
        callbacks += [Message.from_dict(data).copy(args=(*data["args"], final)) for data in meta["cbr"]]
        _enqueue(broker, [_as_callback(callback, cid) for callback in callbacks])
    backend._store_many({_key(backend, cid, "end"): {"r": True}, _key(backend, cid, f"did:{what}"): True}, ttl)
    if meta["up"] is not None:
        items.append(("done", meta["up"][0], meta["up"][1], final, path[:-1]))


def _final(backend: ResultBackend, composition_id: str, meta: dict[str, Any]) -> Any:
    """A finished composition's result: a pipeline's last step's, a group's list."""
    if meta["k"] == "p":
        record = backend._get(_key(backend, composition_id, f"r:{meta['n'] - 1}"))
        return record.get("r") if record else None
    return _results_of(backend, composition_id, meta["n"])


def _results_of(backend: ResultBackend, composition_id: str, size: int) -> list[Any]:
    records = backend._get_many([_key(backend, composition_id, f"r:{i}") for i in range(size)])
    return [record.get("r") if record else None for record in records]


def _fail(
    broker: Broker,
    backend: ResultBackend,
    composition_id: str | None,
    member: int,
    record: dict[str, Any],
    token: str,
    *,
    cancelled: bool = False,
) -> None:
    """Mark a composition and its ancestors failed (or cancelled), first
    failure wins; fire groups' failure callbacks once (not when cancelled)."""
    ttl = _ttl(backend)
    while composition_id is not None:
        meta, end = backend._get_many([_key(backend, composition_id, "meta"), _key(backend, composition_id, "end")])
        if meta is None or end is not None:
            break  # unknown, or already finished, failed or cancelled
        added, count = backend._add_member(_key(backend, composition_id, "failed"), member, ttl)
        if added and count > 1:
            break  # another member failed first
        if not _once(backend, composition_id, "fail", added, token, ttl):
            break
        if meta["k"] == "g" and meta["fcb"] and not cancelled:
            failure_callbacks = [
                _as_callback(Message.from_dict(data).copy(args=(*data["args"], record["e"])), composition_id)
                for data in meta["fcb"]
            ]
            _enqueue(broker, failure_callbacks)
        done = {_key(backend, composition_id, "end"): record, _key(backend, composition_id, "did:fail"): True}
        backend._store_many(done, ttl)
        if meta["up"] is None:
            break
        composition_id, member = meta["up"]


def _group_callbacks(broker: Broker) -> GroupCallbacks | None:
    """The broker's GroupCallbacks middleware, if installed."""
    from .middleware.group_callbacks import GroupCallbacks

    for middleware in broker.middleware:
        if isinstance(middleware, GroupCallbacks):
            return middleware
    return None


def _send_pipe_target(broker: Broker, target: dict[str, Any], result: Any) -> None:
    """dramatiq-style pipelines (no results backend): the next step is nested in the option."""
    message = Message.from_dict(target)
    if not _ignores_input(broker, message):
        message = message.copy(args=(*message.args, result))
    broker.enqueue(message, delay=_check_delay(message.options.get("delay")))


# By id ------------------------------------------------------------------------------


def cancel(composition_id: str, broker: Broker | None = None) -> bool:
    """Cancel a running pipeline or group by id, without the original object.

    Members that have not started are skipped; the composition and every
    enclosing one are marked cancelled, so waiting callers get
    :class:`~django_actors.results.CompositionCancelled`.

    Parameters:
      composition_id: the ``id`` of a pipeline or group (nested ones too).
      broker: the broker; the global one when ``None``.

    Returns:
      ``False`` when it had already finished, failed or been cancelled.

    Raises:
      CompositionNotFound: no composition with this id.
      NoResultsBackend: the broker has no results backend.
    """
    backend = (broker or get_broker()).get_results_backend()
    meta, end = backend._get_many([_key(backend, composition_id, "meta"), _key(backend, composition_id, "end")])
    if meta is None:
        raise CompositionNotFound(f"No composition {composition_id!r} (never run here, or expired).")
    if end is not None:
        return False
    ttl = _ttl(backend)
    backend._store_many({_key(backend, composition_id, "cancel"): True}, ttl)
    record = {"e": {"type": CANCELLED, "message": f"{_kind_name(meta['k'])} {composition_id} was cancelled"}}
    _fail(broker or get_broker(), backend, composition_id, -1, record, f"cancel:{_new_id()}", cancelled=True)
    return True


def progress(composition_id: str, broker: Broker | None = None) -> dict[str, Any]:
    """Read a composition's progress by id, from the backend's counters.

    Parameters:
      composition_id: the ``id`` of a pipeline or group (nested ones too).
      broker: the broker; the global one when ``None``.

    Returns:
      ``{"id", "kind" ("pipeline"/"group"), "total", "completed", "status",
      "error", "parent", "root"}``; ``status`` is ``"running"``,
      ``"completed"``, ``"failed"`` or ``"cancelled"``; ``error`` is
      ``{"type", "message"}`` for the last two, else ``None``.

    Raises:
      CompositionNotFound: no composition with this id.
      NoResultsBackend: the broker has no results backend.
    """
    backend = (broker or get_broker()).get_results_backend()
    meta, end = backend._get_many([_key(backend, composition_id, "meta"), _key(backend, composition_id, "end")])
    if meta is None:
        raise CompositionNotFound(f"No composition {composition_id!r} (never run here, or expired).")
    completed = backend._count_members([_key(backend, composition_id, "done")])[0]
    error = end.get("e") if end else None
    if end is None:
        status = "running"
    elif error is None:
        status = "completed"
    else:
        status = "cancelled" if error.get("type") == CANCELLED else "failed"
    return {
        "id": composition_id,
        "kind": _kind_name(meta["k"]),
        "total": meta["n"],
        "completed": completed,
        "status": status,
        "error": error,
        "parent": meta["up"][0] if meta["up"] else None,
        "root": meta["path"][0],
    }

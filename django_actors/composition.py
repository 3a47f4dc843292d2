"""Composition: pipelines (sequential) and groups (parallel), nested at will.

How it works
------------
``run()`` writes a small record per composition to the results backend (its
kind, size, parent and callbacks) and, for pipelines, one record per step
after the first. Then it enqueues the first messages in one batch. Every
message of a composition carries ``options["composition"] = {"id", "pos",
"path"}``: the id of the composition it belongs to, its position there, and
the ids of all enclosing compositions. That is constant in size, however long
the pipeline.

When a member finishes, the Pipelines middleware records its result and adds
its position to the composition's completion set in one atomic step. A
pipeline then claims the right to send its next step and sends it; a group
whose set just became full claims its completion and fires its callbacks.
Claims hold the finishing message's id, so a message delivered twice never
sends a step or fires a callback twice, while a redelivery of the message
that crashed mid-way finishes the job. A finished composition reports to its
parent the same way, so nesting of any depth works: a group inside a pipeline
hands the list of its results to the next step (a chord).

``completed_count`` is the size of the completion set: one round trip, for
10 members or 10,000, and nested members count only once they have finished
entirely. A member that fails for good marks its compositions failed, so
waiting callers get :class:`ResultFailure` at once and failure callbacks
fire. ``cancel()`` stores a flag that members check before they start.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .broker import Broker, get_broker
from .message import Message
from .middleware.middleware import SkipMessage
from .results.backend import COMPOSITION_TTL, failure_record, unwrap
from .results.errors import ResultMissing, ResultTimeout

if TYPE_CHECKING:
    from .broker import MessageProxy
    from .results.backend import ResultBackend

_NOTHING: Any = object()
#: The option that carries composition membership.
OPTION = "composition"


def _new_id() -> str:
    return uuid.uuid4().hex


def _key(backend: ResultBackend, composition_id: str, suffix: str) -> str:
    return f"{backend.namespace}:c:{composition_id}:{suffix}"


def _ttl(backend: ResultBackend) -> int:
    return int(getattr(backend, "composition_ttl", COMPOSITION_TTL))


class _Composition:
    """Shared behaviour of pipelines and groups."""

    kind = ""
    children: list[Any]

    def __init__(self, broker: Broker | None) -> None:
        self._broker = broker
        self.id = _new_id()
        self._ran = False

    @property
    def broker(self) -> Broker:
        """The broker the composition runs on (the global one unless given)."""
        return self._broker or get_broker()

    @property
    def backend(self) -> ResultBackend:
        """The broker's results backend."""
        return self.broker.get_results_backend()

    def __len__(self) -> int:
        return len(self.children)

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, *, delay: int | None = None) -> Any:
        """Send the composition's first messages.

        Parameters:
          delay: milliseconds to wait before the first messages run.

        Returns:
          The composition itself.

        Raises:
          RuntimeError: it already ran (build a new one to run again).
          NoResultsBackend: the broker has no results backend.
          TypeError: a message cannot be encoded; nothing is sent.
        """
        if self._ran:
            raise RuntimeError(f"This {self.kind} already ran; build a new one to run it again.")
        broker = self.broker
        if not broker.has_results_backend():
            self._run_without_backend(broker, delay)
            self._ran = True
            return self
        backend = broker.get_results_backend()
        records: dict[str, Any] = {}
        messages: list[Message[Any]] = []
        empty: list[tuple[str, Any]] = []
        _launch(backend, self.spec(), None, _NOTHING, [], records, messages, empty)
        for message in messages:  # fail before anything is written or sent
            message.encode()
        if records:
            backend._store_many(records, _ttl(backend))
        if messages:
            broker.enqueue_many(messages, delay=delay)
        self._ran = True
        for composition_id, up in empty:
            _finish(broker, backend, composition_id, [], f"run:{composition_id}")
        return self

    def _run_without_backend(self, broker: Broker, delay: int | None) -> None:
        """dramatiq-compatible mode for brokers without a results backend: a
        pipeline of plain messages nests each next step in ``pipe_target``; a
        group without callbacks just sends its messages."""
        from .broker import NoResultsBackend

        if isinstance(self, pipeline) and all(isinstance(c, Message) for c in self.children):
            if not self.children:
                raise ValueError("A pipeline needs at least one message.")
            target: dict[str, Any] | None = None
            for step in reversed(self.children):
                options = dict(step.options)  # type: ignore[union-attr]
                if target is not None:
                    options["pipe_target"] = target
                target = step.copy(options=options).asdict()  # type: ignore[union-attr]
            assert target is not None
            broker.enqueue(Message.from_dict(target), delay=delay)
            return
        if isinstance(self, group) and not (self.callbacks or self.failure_callbacks):
            broker.enqueue_many(self._leaf_messages_flat(), delay=delay)
            return
        raise NoResultsBackend(
            f"This {self.kind} needs a results backend (nested compositions and callbacks "
            "are tracked there): add the Results middleware."
        )

    def _leaf_messages_flat(self) -> list[Message[Any]]:
        if all(isinstance(c, Message) for c in self.children):
            return list(self.children)
        from .broker import NoResultsBackend

        raise NoResultsBackend(f"A nested {self.kind} needs a results backend.")

    def run_on_commit(self, *, using: str | None = None) -> Any:
        """Run once the current database transaction commits.

        Every message is encoded at once, so bad arguments fail here.
        """
        from django.db import transaction

        for message in self._leaf_messages():
            message.encode()
        transaction.on_commit(self.run, using=using)
        return self

    def _leaf_messages(self) -> list[Message[Any]]:
        found: list[Message[Any]] = []
        for child in self.children:
            if isinstance(child, Message):
                found.append(child)
            else:
                found.extend(child._leaf_messages())
        return found

    # Reading progress -------------------------------------------------------------

    @property
    def completed_count(self) -> int:
        """How many children finished (a nested composition counts once it has
        finished entirely). One round trip, whatever the size."""
        backend = self.backend
        return backend._count_members([_key(backend, self.id, "done")])[0]

    @property
    def completed(self) -> bool:
        """Whether every child finished."""
        return self.completed_count >= len(self)

    def _end(self, *, block: bool, timeout: int | None) -> None:
        backend = self.backend
        key = _key(backend, self.id, "end")
        record = backend.wait(key, timeout=timeout) if block else backend._get(key)
        if record is None:
            if block:
                raise ResultTimeout(f"Timed out waiting for {self.kind} {self.id}.")
            raise ResultMissing(f"The {self.kind} {self.id} has not finished yet.")
        unwrap(record, f"The {self.kind} {self.id}")

    def _child_results(self) -> list[Any]:
        backend = self.backend
        records = backend._get_many([_key(backend, self.id, f"r:{i}") for i in range(len(self))])
        return [unwrap(record, f"Member {i} of {self.kind} {self.id}") if record else None for i, record in enumerate(records)]

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

    def cancel(self) -> None:
        """Cancel: members that have not started are skipped, and callers
        waiting on the composition get :class:`CompositionCancelled`."""
        backend = self.backend
        backend._store_many(
            {
                _key(backend, self.id, "cancel"): {"r": True},
                _key(backend, self.id, "end"): {"e": {"type": "Cancelled", "message": f"{self.kind} {self.id} was cancelled"}},
            },
            _ttl(backend),
        )

    @property
    def cancelled(self) -> bool:
        """Whether the composition was cancelled."""
        backend = self.backend
        return backend._get(_key(backend, self.id, "cancel")) is not None

    def __or__(self, other: Message[Any] | _Composition) -> pipeline:
        return pipeline([self, other], broker=self._broker)


def _check_child(child: Any, what: str) -> None:
    if not isinstance(child, Message | pipeline | group):
        raise TypeError(
            f"A {what} takes messages, pipelines and groups, not {type(child).__name__}: "
            "use actor.message(...) to build a message."
        )


class pipeline(_Composition):  # noqa: N801 - dramatiq's name
    """Run messages (or groups) one after the other; each step receives the
    previous step's result as its last positional argument (unless it has
    ``pipe_ignore``). A group step hands the list of its results on.

    Parameters:
      children: messages, pipelines (flattened into this one) and groups.
      broker: the broker; the global one when ``None``.
    """

    kind = "pipeline"

    def __init__(self, children: Iterable[Message[Any] | pipeline | group], *, broker: Broker | None = None) -> None:
        super().__init__(broker)
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
        """The pipeline's messages, in order (a group step contributes its own)."""
        return self._leaf_messages()

    def spec(self) -> dict[str, Any]:
        if not self.children:
            raise ValueError("A pipeline needs at least one message.")
        return {"p": self.id, "s": [_spec(child) for child in self.children]}

    def get_result(self, *, block: bool = False, timeout: int | None = None) -> Any:
        """Return the result of the last step.

        Raises:
          ResultMissing: not blocking, and the pipeline has not finished.
          ResultTimeout: blocking, and ``timeout`` (ms) ran out.
          ResultFailure: a step failed for good.
        """
        self._end(block=block, timeout=timeout)
        return self._child_results()[-1]

    def get_results(self, *, block: bool = False, timeout: int | None = None) -> list[Any]:
        """Return every step's result, in order (a group step's is a list)."""
        self._end(block=block, timeout=timeout)
        return self._child_results()

    def __repr__(self) -> str:
        return f"pipeline({self.id}, {len(self)} steps)"


class group(_Composition):  # noqa: N801 - dramatiq's name
    """Run messages, pipelines and groups in parallel.

    Parameters:
      children: messages, pipelines and groups.
      broker: the broker; the global one when ``None``.
    """

    kind = "group"

    def __init__(self, children: Iterable[Message[Any] | pipeline | group], *, broker: Broker | None = None) -> None:
        super().__init__(broker)
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

    def add_completion_callback(self, message: Message[Any], *, with_results: bool = False) -> None:
        """Send ``message`` once every member has finished (exactly once).

        Parameters:
          with_results: append the list of the members' results to the
            message's arguments.
        """
        if not isinstance(message, Message):
            raise TypeError(f"A completion callback must be a message, not {type(message).__name__}.")
        self.callbacks.append((message, with_results))

    def add_failure_callback(self, message: Message[Any]) -> None:
        """Send ``message`` once, if a member fails for good. It receives
        ``{"type": ..., "message": ...}`` describing the failure as its last argument."""
        if not isinstance(message, Message):
            raise TypeError(f"A failure callback must be a message, not {type(message).__name__}.")
        self.failure_callbacks.append(message)

    def spec(self) -> dict[str, Any]:
        return {
            "g": self.id,
            "c": [_spec(child) for child in self.children],
            "cb": [m.asdict() for m, with_results in self.callbacks if not with_results],
            "cbr": [m.asdict() for m, with_results in self.callbacks if with_results],
            "fcb": [m.asdict() for m in self.failure_callbacks],
        }

    def get_results(self, *, block: bool = False, timeout: int | None = None) -> list[Any]:
        """Return the members' results, in member order.

        Raises:
          ResultMissing: not blocking, and the group has not finished.
          ResultTimeout: blocking, and ``timeout`` (ms) ran out.
          ResultFailure: a member failed for good.
        """
        self._end(block=block, timeout=timeout)
        return self._child_results()

    def __repr__(self) -> str:
        return f"group({self.id}, {len(self)} members)"


def _spec(child: Message[Any] | pipeline | group) -> dict[str, Any]:
    if isinstance(child, Message):
        return {"m": child.asdict()}
    return child.spec()


# Launching ----------------------------------------------------------------------------


def _launch(
    backend: ResultBackend,
    spec: dict[str, Any],
    up: list[Any] | None,
    value: Any,
    path: list[str],
    records: dict[str, Any],
    messages: list[Message[Any]],
    empty: list[tuple[str, Any]],
) -> None:
    """Collect the records to store and messages to send to start ``spec``.

    ``up`` is ``[parent_id, position]``; ``value`` is the previous pipeline
    step's result, appended to the first messages' arguments.
    """
    if "m" in spec:
        message = Message.from_dict(spec["m"])
        options = dict(message.options)
        args = message.args
        if value is not _NOTHING and not options.get("pipe_ignore"):
            args = (*args, value)
        if up is not None:
            options[OPTION] = {"id": up[0], "pos": up[1], "path": path}
        messages.append(message.copy(args=args, options=options))
        return
    if "p" in spec:
        composition_id, children = spec["p"], spec["s"]
        inner = [*path, composition_id]
        records[_key(backend, composition_id, "meta")] = {"k": "p", "n": len(children), "up": up, "path": inner}
        for position, step in enumerate(children[1:], 1):
            records[_key(backend, composition_id, f"s:{position}")] = step
        _launch(backend, children[0], [composition_id, 0], value, inner, records, messages, empty)
        return
    composition_id, children = spec["g"], spec["c"]
    inner = [*path, composition_id]
    records[_key(backend, composition_id, "meta")] = {
        "k": "g",
        "n": len(children),
        "up": up,
        "path": inner,
        "cb": spec.get("cb", []),
        "cbr": spec.get("cbr", []),
        "fcb": spec.get("fcb", []),
    }
    if not children:
        empty.append((composition_id, up))
    for position, child in enumerate(children):
        _launch(backend, child, [composition_id, position], value, inner, records, messages, empty)


def _send_launch(broker: Broker, backend: ResultBackend, spec: dict[str, Any], up: list[Any], value: Any, path: list[str], token: str) -> None:
    records: dict[str, Any] = {}
    messages: list[Message[Any]] = []
    empty: list[tuple[str, Any]] = []
    _launch(backend, spec, up, value, path, records, messages, empty)
    if records:
        backend._store_many(records, _ttl(backend))
    if messages:
        broker.enqueue_many(messages)
    for composition_id, _ in empty:
        _finish(broker, backend, composition_id, [], token)


# Worker side -----------------------------------------------------------------------


def check_cancelled(broker: Broker, message: MessageProxy) -> None:
    """Skip a composition member whose composition (or an enclosing one) was cancelled."""
    membership = message.options.get(OPTION)
    if not membership:
        return
    backend = broker.get_results_backend()
    flags = backend._get_many([_key(backend, cid, "cancel") for cid in membership["path"]])
    if any(flag is not None for flag in flags):
        raise SkipMessage(f"Message {message.message_id} belongs to a cancelled composition.")


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
    _child_done(broker, backend, membership["id"], membership["pos"], result, message.message_id)


def _child_done(broker: Broker, backend: ResultBackend, composition_id: str, position: int, result: Any, token: str) -> None:
    ttl = _ttl(backend)
    while True:
        meta = backend._get(_key(backend, composition_id, "meta"))
        if meta is None:
            broker.logger.warning("Composition %s has no record (expired?); not advancing it.", composition_id)
            return
        _, count = backend._add_member(
            _key(backend, composition_id, "done"),
            position,
            ttl,
            {_key(backend, composition_id, f"r:{position}"): {"r": result}},
        )
        if meta["k"] == "p":
            if position + 1 < meta["n"]:
                if backend._claim(_key(backend, composition_id, f"next:{position}"), token, ttl):
                    step = backend._get(_key(backend, composition_id, f"s:{position + 1}"))
                    _send_launch(broker, backend, step, [composition_id, position + 1], result, meta["path"], token)
                return
            final = result
        else:
            if count < meta["n"]:
                return
            if not backend._claim(_key(backend, composition_id, "fire"), token, ttl):
                return
            final = None
            if meta["up"] is not None or meta["cbr"]:
                records = backend._get_many([_key(backend, composition_id, f"r:{i}") for i in range(meta["n"])])
                final = [record.get("r") if record else None for record in records]
        up = _complete(broker, backend, composition_id, meta, final)
        if up is None:
            return
        composition_id, position = up
        result = final


def _complete(broker: Broker, backend: ResultBackend, composition_id: str, meta: dict[str, Any], final: Any) -> list[Any] | None:
    """Mark a composition finished, fire a group's callbacks; return its parent link."""
    backend._store_many({_key(backend, composition_id, "end"): {"r": True}}, _ttl(backend))
    if meta["k"] == "g":
        callbacks = [Message.from_dict(data) for data in meta["cb"]]
        callbacks += [Message.from_dict(data).copy(args=(*data["args"], final)) for data in meta["cbr"]]
        if callbacks:
            broker.enqueue_many(callbacks)
    return meta["up"]  # type: ignore[no-any-return]


def _finish(broker: Broker, backend: ResultBackend, composition_id: str, final: Any, token: str) -> None:
    """Complete an empty group at once and report to its parent."""
    meta = backend._get(_key(backend, composition_id, "meta"))
    if meta is None:
        return
    up = _complete(broker, backend, composition_id, meta, final)
    if up is not None:
        _child_done(broker, backend, up[0], up[1], final, token)


def on_message_failed(broker: Broker, message: MessageProxy) -> None:
    """Mark the compositions of a message that failed for good as failed."""
    membership = message.options.get(OPTION)
    if not membership:
        return
    backend = broker.get_results_backend()
    ttl = _ttl(backend)
    record = failure_record(message.exception, message.fail_reason)
    composition_id: str | None = membership["id"]
    while composition_id is not None:
        if not backend._claim(_key(backend, composition_id, "failed"), message.message_id, ttl):
            return
        meta = backend._get(_key(backend, composition_id, "meta"))
        backend._store_many({_key(backend, composition_id, "end"): record}, ttl)
        if meta is None:
            return
        if meta["k"] == "g" and meta["fcb"]:
            broker.enqueue_many(
                [Message.from_dict(data).copy(args=(*data["args"], record["e"])) for data in meta["fcb"]]
            )
        composition_id = meta["up"][0] if meta["up"] else None


def _send_pipe_target(broker: Broker, target: dict[str, Any], result: Any) -> None:
    """dramatiq-style pipelines (no results backend): the next step is nested in the option."""
    message = Message.from_dict(target)
    if not message.options.get("pipe_ignore"):
        message = message.copy(args=(*message.args, result))
    broker.enqueue(message)

"""Messages: the unit of work that travels through a broker."""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .encoder import MessageData, get_encoder
from .errors import DecodeError

if TYPE_CHECKING:
    from .broker import Broker
    from .composition import group, pipeline
    from .results.backend import ResultBackend

R = TypeVar("R")

#: Fields every encoded message must carry.
REQUIRED_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id")


def generate_unique_id() -> str:
    """Return a new message id: a random (version 4) UUID in its usual text form.

    Built from 16 random bytes directly, three times cheaper than
    ``str(uuid.uuid4())``, with the same format and randomness.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def current_millis() -> int:
    """Return the current Unix time in milliseconds."""
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True)
class Message(Generic[R]):
    """A message: which actor to run, with which arguments, and options.

    ``message_id`` is stable across retries; results are keyed by it.
    Messages are immutable; use :meth:`copy` to derive a changed one.
    """

    queue_name: str
    actor_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    message_id: str = dataclasses.field(default_factory=generate_unique_id)
    message_timestamp: int = dataclasses.field(default_factory=current_millis)

    @classmethod
    def decode(cls, data: bytes) -> Message[Any]:
        """Decode a message from bytes.

        Raises:
          DecodeError: the payload is not a message; its text names the problem.
        """
        return cls.from_dict(get_encoder().decode(data), raw=data)

    @classmethod
    def from_dict(cls, fields: MessageData, *, raw: Any = None) -> Message[Any]:
        """Build a message from its dict form, validating every field."""
        missing = [name for name in REQUIRED_FIELDS if name not in fields]
        if missing:
            raise DecodeError(f"message is missing field(s): {', '.join(missing)}", raw)
        problems = []
        for name in ("queue_name", "actor_name", "message_id"):
            if not isinstance(fields[name], str) or not fields[name]:
                problems.append(f"{name} must be a non-empty string")
        if not isinstance(fields["args"], list | tuple):
            problems.append("args must be a list")
        if not isinstance(fields["kwargs"], dict):
            problems.append("kwargs must be an object")
        if not isinstance(fields["options"], dict):
            problems.append("options must be an object")
        timestamp = fields.get("message_timestamp", 0)
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            problems.append("message_timestamp must be an integer")
        if problems:
            raise DecodeError("invalid message: " + "; ".join(problems), raw)
        return cls(
            queue_name=fields["queue_name"],
            actor_name=fields["actor_name"],
            args=tuple(fields["args"]),
            kwargs=fields["kwargs"],
            options=fields["options"],
            message_id=fields["message_id"],
            message_timestamp=timestamp or current_millis(),
        )

    def encode(self) -> bytes:
        """Encode this message into bytes.

        Raises:
          TypeError: an argument or option cannot be encoded; the text names it.
        """
        try:
            return get_encoder().encode(self.asdict())
        except TypeError as exc:
            raise TypeError(self._describe_encoding_error(exc)) from exc

    def _describe_encoding_error(self, exc: TypeError) -> str:
        encoder = get_encoder()
        where = "options"
        for position, value in enumerate(self.args):
            if not _encodes(encoder, value):
                where = f"positional argument {position} ({type(value).__name__})"
                break
        else:
            for name, value in self.kwargs.items():
                if not _encodes(encoder, value):
                    where = f"keyword argument {name!r} ({type(value).__name__})"
                    break
            else:
                for name, value in self.options.items():
                    if not _encodes(encoder, value):
                        where = f"option {name!r} ({type(value).__name__})"
                        break
        return (
            f"Cannot encode {where} of a message for actor {self.actor_name!r} "
            f"with {type(encoder).__name__}: {exc}"
        )

    def asdict(self) -> MessageData:
        """Return the message as a plain dict (its wire form before encoding)."""
        return {
            "queue_name": self.queue_name,
            "actor_name": self.actor_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "message_id": self.message_id,
            "message_timestamp": self.message_timestamp,
        }

    def copy(self, **attributes: Any) -> Message[R]:
        """Return a copy of this message with ``attributes`` replaced.

        ``options`` is copied, so the copy can be changed without touching the
        original.
        """
        attributes.setdefault("options", dict(self.options))
        return dataclasses.replace(self, **attributes)

    @property
    def message_datetime(self) -> datetime.datetime:
        """The time the message was created, as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.message_timestamp / 1000, tz=datetime.UTC)

    def get_result(
        self,
        *,
        backend: ResultBackend | None = None,
        block: bool = False,
        timeout: int | None = None,
    ) -> R:
        """Get this message's result from a results backend.

        Parameters:
          backend: the backend; the broker's Results middleware's when ``None``.
          block: wait for the result to be stored.
          timeout: how long to wait, in milliseconds (default 10 seconds).

        Raises:
          ResultMissing: not blocking, and there is no result yet.
          ResultTimeout: blocking, and the timeout ran out.
          ResultFailure: the actor failed for good.
        """
        if backend is None:
            from .broker import get_broker

            backend = get_broker().get_results_backend()
        return backend.get_result(self, block=block, timeout=timeout)  # type: ignore[no-any-return]

    def send(self, *, delay: int | None = None, broker: Broker | None = None) -> Message[R]:
        """Enqueue this message as it is (same ``message_id``).

        Parameters:
          delay: milliseconds to wait before it runs.
          broker: the broker; the global one when ``None``.

        Returns:
          The message as enqueued.

        Raises:
          TypeError: it cannot be encoded; nothing is enqueued.
        """
        if broker is None:
            from .broker import get_broker

            broker = get_broker()
        return broker.enqueue(self, delay=delay)

    def __or__(self, other: Message[Any] | pipeline | group) -> pipeline:
        from .composition import pipeline

        return pipeline([self, other])

    def __str__(self) -> str:
        params = ", ".join(
            [repr(arg) for arg in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        )
        return f"{self.actor_name}({params})"


def _encodes(encoder: Any, value: Any) -> bool:
    try:
        encoder.encode({"v": value})
    except TypeError:
        return False
    return True

"""Encoders turn message and result payloads into bytes and back.

JSON is the default. Pickle exists for projects that need it, is never a
default, and logs a warning when it is chosen.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
from typing import Any

from .errors import DecodeError

logger = logging.getLogger(__name__)

#: The type of a decoded message or result payload.
MessageData = dict[str, Any]


class Encoder:
    """Base class for encoders."""

    def encode(self, data: MessageData) -> bytes:
        """Encode ``data`` into bytes. Raises ``TypeError`` when it cannot."""
        raise NotImplementedError

    def decode(self, data: bytes) -> MessageData:
        """Decode bytes into a dict. Raises :class:`DecodeError` when it cannot."""
        raise NotImplementedError


class JSONEncoder(Encoder):
    """Compact JSON, UTF-8. Tuples become lists; non-JSON values raise ``TypeError``."""

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        self._decoder = json.JSONDecoder()
        self._local = threading.local()

    def _c_encoder(self) -> Any:
        """This thread's C encoder with the settings of ``self._encoder``
        (what ``json.JSONEncoder.encode`` builds anew on every call), or
        ``None`` without the C accelerator."""
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is None:
            return None
        settings = self._encoder
        try:
            return make(
                {},  # the markers of circular-reference detection: this thread's own
                settings.default,
                json.encoder.encode_basestring,  # ensure_ascii=False
                None,
                settings.key_separator,
                settings.item_separator,
                settings.sort_keys,
                settings.skipkeys,
                settings.allow_nan,
            )
        except TypeError:  # another interpreter's signature: the standard path
            return None

    def encode(self, data: MessageData) -> bytes:
        local = self._local
        encode: Any = getattr(local, "encode", False)
        if encode is False:
            encode = local.encode = self._c_encoder()
        try:
            if encode is None:
                return self._encoder.encode(data).encode("utf-8")
            return "".join(encode(data, 0)).encode("utf-8")
        except BaseException as exc:
            local.encode = False  # its markers may be left dirty: a new one next time
            if isinstance(exc, ValueError):  # circular references
                raise TypeError(str(exc)) from exc
            raise

    def decode(self, data: bytes) -> MessageData:
        try:
            text = data.decode("utf-8") if isinstance(data, bytes | bytearray | memoryview) else data
            value = self._decoder.decode(text)
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:  # RecursionError: nested too deep
            raise DecodeError(f"payload is not valid JSON: {exc}", data, exc) from exc
        if not isinstance(value, dict):
            raise DecodeError(f"payload is JSON but not an object: {type(value).__name__}", data)
        return value


class PickleEncoder(Encoder):
    """Pickle. Unsafe with untrusted queues: anyone who can write to the
    broker can run code in your workers. Logs a warning when created."""

    def __init__(self) -> None:
        logger.warning(
            "django_actors is using PickleEncoder: anyone who can write to the broker "
            "can run arbitrary code in the workers. Prefer JSONEncoder."
        )

    def encode(self, data: MessageData) -> bytes:
        try:
            return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(str(exc)) from exc

    def decode(self, data: bytes) -> MessageData:
        try:
            value = pickle.loads(data)  # noqa: S301 - opt-in, warned about
        except Exception as exc:
            raise DecodeError(f"payload is not a valid pickle: {exc}", data, exc) from exc
        if not isinstance(value, dict):
            raise DecodeError("pickled payload is not a dict", data)
        return value


_encoder: Encoder | None = None


def get_encoder() -> Encoder:
    """Return the global encoder (JSON unless :func:`set_encoder` chose another)."""
    global _encoder
    if _encoder is None:
        _encoder = JSONEncoder()
    return _encoder


def set_encoder(encoder: Encoder) -> None:
    """Set the global encoder used for messages and results."""
    global _encoder
    _encoder = encoder

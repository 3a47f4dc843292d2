"""Message signing: HMAC-SHA256 around the encoder, verified before anything runs.

Anyone who can write to the broker's Redis (or its table) can forge a
message. With ``DJANGO_ACTORS["SIGNING_KEY"]`` set, every payload the
encoder produces (messages, and the records of the results backend, which
hold the next steps of pipelines) is signed, and every payload it decodes is
verified first: an unsigned or tampered payload raises
:class:`~django_actors.errors.InvalidSignature` (a ``DecodeError``), so every
broker's decode path dead-letters it with the reason and the actor never
runs. Verification happens before the inner encoder sees the bytes, so with
pickle a forged payload is never unpickled.

    DJANGO_ACTORS = {
        "SIGNING_KEY": env("ACTORS_SIGNING_KEY"),
        # Keys still accepted (not used to sign) while rotating:
        "SIGNING_KEY_FALLBACKS": [env("ACTORS_OLD_SIGNING_KEY")],
    }

Rotating a key: deploy with the new key in ``SIGNING_KEY`` and the old one
in ``SIGNING_KEY_FALLBACKS`` (producers sign with the new key, workers accept
both); once the queues have drained of old messages, drop the fallback.
Turning signing on for the first time: messages already queued unsigned are
dead-lettered; drain the queues first.

Wire format: ``b"djas1." + base64url(hmac)[:43] + b"." + payload``. The HMAC
key is derived from the setting (with a purpose string), so reusing Django's
``SECRET_KEY`` here does not let these signatures validate anything else.
Signing does not stop replays: a captured signed message can be enqueued again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

from .encoder import Encoder, JSONEncoder, MessageData
from .errors import DecodeError, InvalidSignature

#: Marks a signed payload (and its format version).
PREFIX = b"djas1."
#: Length of the base64url signature, without padding.
SIGNATURE_LENGTH = 43
#: Mixed into the derived HMAC key.
PURPOSE = b"django_actors.signing.v1"


def derive_key(key: str | bytes) -> bytes:
    """The HMAC key for a configured signing key.

    Raises:
      ValueError: the key is empty or not a string.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes) or not key:
        raise ValueError("A signing key must be a non-empty string.")
    return hmac.new(key, PURPOSE, hashlib.sha256).digest()


def _signature(derived: bytes, payload: bytes) -> bytes:
    digest = hmac.new(derived, payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest)[:SIGNATURE_LENGTH]


class SigningEncoder(Encoder):
    """Wrap an encoder: sign what it encodes, verify before it decodes.

    Parameters:
      key: the key that signs (and verifies).
      fallback_keys: older keys that still verify, for rotation.
      inner: the encoder of the payload (JSON by default).

    Raises:
      ValueError: a key is empty.
    """

    def __init__(
        self, key: str | bytes, *, fallback_keys: Iterable[str | bytes] = (), inner: Encoder | None = None
    ) -> None:
        self.inner = inner or JSONEncoder()
        self._signing_key = derive_key(key)
        self._keys = [self._signing_key, *(derive_key(k) for k in fallback_keys)]

    def sign(self, payload: bytes) -> bytes:
        """Return ``payload`` with its signature."""
        return PREFIX + _signature(self._signing_key, payload) + b"." + payload

    def verify(self, data: bytes) -> bytes:
        """Return the payload of signed ``data``.

        Raises:
          InvalidSignature: ``data`` is not signed, or no key matches its signature.
        """
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        elif isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if not isinstance(data, bytes) or not data.startswith(PREFIX):
            raise InvalidSignature("message is not signed (signing is on: DJANGO_ACTORS['SIGNING_KEY'])", data)
        start = len(PREFIX)
        signature = data[start : start + SIGNATURE_LENGTH]
        separator = data[start + SIGNATURE_LENGTH : start + SIGNATURE_LENGTH + 1]
        if len(signature) != SIGNATURE_LENGTH or separator != b".":
            raise InvalidSignature("message signature is malformed", data)
        payload = data[start + SIGNATURE_LENGTH + 1 :]
        for derived in self._keys:
            if hmac.compare_digest(_signature(derived, payload), signature):
                return payload
        raise InvalidSignature("message signature is invalid: tampered with, or signed with an unknown key", data)

    def encode(self, data: MessageData) -> bytes:
        return self.sign(self.inner.encode(data))

    def decode(self, data: bytes) -> MessageData:
        payload = self.verify(data)
        try:
            return self.inner.decode(payload)
        except DecodeError:
            raise
        except Exception as exc:  # a custom inner encoder: still a decode error
            raise DecodeError(f"payload cannot be decoded: {type(exc).__name__}: {exc}", data, exc) from exc

    def __repr__(self) -> str:
        return f"<SigningEncoder inner={type(self.inner).__name__} keys={len(self._keys)}>"

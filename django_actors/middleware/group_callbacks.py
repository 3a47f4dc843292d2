"""GroupCallbacks: group completion callbacks on a broker without a results backend.

With a results backend, groups fire their callbacks by themselves (see
:mod:`django_actors.composition`) and this middleware is not needed. Without
one, ``group.add_completion_callback`` needs this middleware: it counts the
group's finished members on a rate-limiter backend (the one a
:class:`~django_actors.rate_limits.Barrier` uses) and sends the callbacks
once the last member has finished.

Each member (the last step of a member pipeline) carries
``options["group_callbacks"] = {"id": group id, "n": size, "cb": [callback
messages as dicts]}``. A member counts by its ``message_id``, so a message
delivered twice counts once; the delivery that sees the count reach ``n``
claims the callbacks with a token derived from its own ``message_id``, so the
callbacks are sent once, and sent again only by the redelivery of that same
message if its first delivery died before finishing (at least once).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from .middleware import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..rate_limits.backend import RateLimiterBackend

#: The message option that carries a member's group and its callbacks.
OPTION = "group_callbacks"
#: How long the counters of a group live, in milliseconds (one day).
DEFAULT_BARRIER_TTL = 86_400_000


def _token(message_id: str) -> int:
    """A positive integer (48 bits) that stands for ``message_id`` in a claim."""
    return int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=6).digest(), "big") or 1


class GroupCallbacks(Middleware):
    """Send a group's completion callbacks once all its members finished,
    on brokers without a results backend.

    Parameters:
      rate_limiter_backend: where the members are counted (stub or Redis
        rate-limiter backend).
      barrier_ttl: how long a group's counters live, in milliseconds; a
        group that takes longer never fires its callbacks.

    Raises:
      TypeError: ``rate_limiter_backend`` is not a rate-limiter backend.
      ValueError: ``barrier_ttl`` is not a positive integer.
    """

    def __init__(self, rate_limiter_backend: RateLimiterBackend, *, barrier_ttl: int = DEFAULT_BARRIER_TTL) -> None:
        from ..rate_limits.backend import RateLimiterBackend

        if not isinstance(rate_limiter_backend, RateLimiterBackend):
            raise TypeError(f"GroupCallbacks needs a rate-limiter backend, not {type(rate_limiter_backend).__name__}.")
        if isinstance(barrier_ttl, bool) or not isinstance(barrier_ttl, int) or barrier_ttl <= 0:
            raise ValueError(f"barrier_ttl must be a positive number of milliseconds, not {barrier_ttl!r}.")
        self.rate_limiter_backend = rate_limiter_backend
        self.barrier_ttl = barrier_ttl

    def member_options(self, group_id: str, size: int, callbacks: list[dict[str, Any]]) -> dict[str, Any]:
        """The option a member of group ``group_id`` carries (used by ``group.run()``)."""
        return {OPTION: {"id": group_id, "n": size, "cb": callbacks}}

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is not None or message.failed:
            return
        membership = message.options.get(OPTION)
        if not membership:
            return
        if self.completed(membership["id"], membership["n"], message.message_id):
            from ..message import Message

            broker.enqueue_many([Message.from_dict(data) for data in membership["cb"]])

    def completed(self, group_id: str, size: int, message_id: str) -> bool:
        """Count member ``message_id`` of group ``group_id`` as finished.

        Returns:
          True when this delivery is the one that sends the callbacks.
        """
        backend, ttl = self.rate_limiter_backend, self.barrier_ttl
        count = backend.add_member(f"group-callbacks:{group_id}:done", message_id, ttl)
        if count < size:
            return False
        claim = f"group-callbacks:{group_id}:fired"
        token = _token(message_id)
        return backend.add(claim, token, ttl) or backend.get(claim) == token

"""Barrier: wait until a number of parties have arrived, across processes."""

from __future__ import annotations

import math
import uuid

from .backend import RateLimiterBackend
from .rate_limiter import check_backend, check_key, check_positive_int


class Barrier:
    """A distributed barrier: parties block in :meth:`wait` until the last
    of them arrives, which releases them all.

    Use a fresh key (a UUID) for each barrier: keys are not reset once a
    barrier is released, they expire after ``ttl``. Each party calls
    :meth:`wait` once.

    Parameters:
      backend: where the barrier's state is kept.
      key: the barrier's name.
      ttl: how long the barrier's records live, in milliseconds (default 15 minutes).

    Raises:
      ValueError: when ``key`` is empty or ``ttl`` is not positive.
    """

    def __init__(self, backend: RateLimiterBackend, key: str, *, ttl: int = 900_000) -> None:
        self.backend = check_backend(backend)
        self.key = check_key(key)
        self.ttl = check_positive_int("ttl", ttl)
        self._arrived_key = f"{key}@arrived"

    def create(self, parties: int) -> bool:
        """Create the barrier for ``parties`` parties.

        Raises:
          ValueError: when ``parties`` is not a positive integer.

        Returns:
          True when it was created, False when it already existed (its
          number of parties is then left unchanged).
        """
        check_positive_int("parties", parties)
        return self.backend.add(self.key, parties, self.ttl)

    def wait(self, *, block: bool = True, timeout: float | None = None) -> bool:
        """Arrive at the barrier and, with ``block``, wait for the other parties.

        Parameters:
          block: wait until every party has arrived.
          timeout: the longest wait, in milliseconds; by default the wait
            ends when the barrier expires (``ttl``).

        Raises:
          RuntimeError: when the barrier does not exist (never created, or expired).
          ValueError: when ``timeout`` is negative.

        Returns:
          True when every party has arrived, False when the wait timed out
          (or, without ``block``, when some have not arrived yet).
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0 or math.isinf(timeout)
        ):
            raise ValueError(f"timeout must be a non-negative number of milliseconds or None, got {timeout!r}")
        parties = self.backend.get(self.key)
        if parties is None:
            raise RuntimeError(f"Barrier {self.key!r} does not exist: call create(parties) first (or it expired)")
        arrived = self.backend.add_member(self._arrived_key, uuid.uuid4().hex, self.ttl)
        if arrived >= parties:
            # Late arrivals notify again, in case the release notification was
            # lost (a connection dropped right after the last arrival): the
            # unclaimed ones expire with the barrier.
            self.backend.notify(self.key, parties - 1, self.ttl)
            return True
        if not block:
            return False
        if self.backend.wait(self.key, self.ttl if timeout is None else math.ceil(timeout)):
            return True
        # Released at the very end of the wait?
        return self.backend.count_members(self._arrived_key) >= parties

    def __repr__(self) -> str:
        return f"Barrier(key={self.key!r})"

"""ConcurrentRateLimiter: at most ``limit`` holders at once (a distributed semaphore)."""

from __future__ import annotations

from .backend import RateLimiterBackend
from .rate_limiter import RateLimiter, check_positive_int


class ConcurrentRateLimiter(RateLimiter):
    """Let at most ``limit`` callers hold the limiter at the same time.

    With ``limit=1`` it is a distributed mutex. Each holder gets a lease that
    lapses after ``ttl`` milliseconds, so a process that dies while holding
    it blocks the others for at most ``ttl``; keep ``ttl`` longer than the
    work the limiter guards.

    Parameters:
      backend: where the leases are kept.
      key: the name of the limited resource.
      limit: how many holders at once.
      ttl: how long a lease lives, in milliseconds (default 15 minutes).

    Raises:
      ValueError: when ``key`` is empty or ``limit`` or ``ttl`` is not positive.
    """

    def __init__(self, backend: RateLimiterBackend, key: str, *, limit: int = 1, ttl: int = 900_000) -> None:
        super().__init__(backend, key)
        self.limit = check_positive_int("limit", limit)
        self.ttl = check_positive_int("ttl", ttl)

    def _acquire(self, token: str) -> bool:
        return self.backend.acquire_lease(self.key, token, self.limit, self.ttl)

    def _release(self, token: str) -> None:
        self.backend.release_lease(self.key, token)

"""Rate limiters and barriers shared across workers.

::

    from django_actors.rate_limits import ConcurrentRateLimiter
    from django_actors.rate_limits.backends import RedisBackend

    DISTRIBUTED_MUTEX = ConcurrentRateLimiter(RedisBackend(), "sync-crm", limit=1)

    @actor
    def sync_crm():
        with DISTRIBUTED_MUTEX.acquire():
            ...

A limiter that cannot be acquired raises :class:`RateLimitExceeded`; the
Retries middleware then retries the message later.
"""

from __future__ import annotations

from ..errors import RateLimitExceeded
from .backend import RateLimiterBackend
from .barrier import Barrier
from .bucket import BucketRateLimiter
from .concurrent import ConcurrentRateLimiter
from .rate_limiter import RateLimiter
from .window import WindowRateLimiter

__all__ = [
    "Barrier",
    "BucketRateLimiter",
    "ConcurrentRateLimiter",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimiterBackend",
    "WindowRateLimiter",
]

"""BucketRateLimiter: at most ``limit`` acquisitions per fixed time bucket."""

from __future__ import annotations

from .backend import RateLimiterBackend
from .rate_limiter import RateLimiter, check_positive_int


class BucketRateLimiter(RateLimiter):
    """Allow at most ``limit`` acquisitions per ``bucket`` milliseconds.

    Buckets are fixed and aligned on the Unix epoch (with ``bucket=1000``,
    each wall-clock second is one bucket), so up to ``2 * limit``
    acquisitions can happen within one bucket's length across a boundary;
    use :class:`WindowRateLimiter` when that matters. Acquisitions are not
    given back when the ``with`` block ends.

    Parameters:
      backend: where the counts are kept.
      key: the name of the limited resource.
      limit: how many acquisitions per bucket.
      bucket: the bucket's length, in milliseconds.

    Raises:
      ValueError: when ``key`` is empty or ``limit`` or ``bucket`` is not positive.
    """

    def __init__(self, backend: RateLimiterBackend, key: str, *, limit: int = 1, bucket: int = 1000) -> None:
        super().__init__(backend, key)
        self.limit = check_positive_int("limit", limit)
        self.bucket = check_positive_int("bucket", bucket)

    def _acquire(self, token: str) -> bool:
        return self.backend.incr_bucket(self.key, self.limit, self.bucket)

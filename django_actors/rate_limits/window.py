"""WindowRateLimiter: at most ``limit`` acquisitions in any sliding window."""

from __future__ import annotations

import math

from .backend import RateLimiterBackend
from .rate_limiter import RateLimiter, check_positive_int


class WindowRateLimiter(RateLimiter):
    """Allow at most ``limit`` acquisitions within any ``window`` seconds.

    The window slides: an acquisition counts for exactly ``window`` seconds
    after it happened, so there is no burst of ``2 * limit`` across a
    boundary as with fixed buckets. Acquisitions are not given back when the
    ``with`` block ends. The backend keeps one entry per acquisition in the
    window, so memory grows with ``limit``.

    Parameters:
      backend: where the acquisitions are recorded.
      key: the name of the limited resource.
      limit: how many acquisitions per window.
      window: the window's length, in seconds (fractions allowed).

    Raises:
      ValueError: when ``key`` is empty or ``limit`` or ``window`` is not positive.
    """

    def __init__(self, backend: RateLimiterBackend, key: str, *, limit: int = 1, window: float = 1) -> None:
        super().__init__(backend, key)
        self.limit = check_positive_int("limit", limit)
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0 or math.isinf(window):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        self.window = window
        self._window_ms = max(round(window * 1000), 1)

    def _acquire(self, token: str) -> bool:
        return self.backend.add_to_window(self.key, token, self.limit, self._window_ms)

"""The RateLimiterBackend base class.

A backend keeps the shared state of rate limiters and barriers. Each method is
one atomic operation, so limiters in many threads, processes and hosts agree.
Durations are in milliseconds. Keys of different kinds (values, leases,
windows, buckets, events) live in separate namespaces, so one key name can be
used by several kinds of limiter at once.
"""

from __future__ import annotations


class RateLimiterBackend:
    """Base class for rate limiter backends.

    Subclasses implement every method below; each must be atomic and
    thread-safe.
    """

    # Values and sets (Barrier) ----------------------------------------------------

    def add(self, key: str, value: int, ttl: int) -> bool:
        """Store ``value`` under ``key`` unless the key exists.

        Parameters:
          key: the key.
          value: the value.
          ttl: how long the key lives, in milliseconds.

        Returns:
          True when the value was stored, False when the key existed.
        """
        raise NotImplementedError

    def get(self, key: str) -> int | None:
        """Return the value stored under ``key``, or None when it is absent or expired."""
        raise NotImplementedError

    def add_member(self, key: str, member: str, ttl: int) -> int:
        """Add ``member`` to the set under ``key``; adding it twice changes nothing,
        so a call retried after a dropped connection is not counted twice.

        Parameters:
          key: the set's key.
          member: the member.
          ttl: how long a set created by this call lives, in milliseconds;
            the expiry of an existing set is left alone.

        Returns:
          The set's size after the call.
        """
        raise NotImplementedError

    def count_members(self, key: str) -> int:
        """Return the size of the set under ``key`` (0 when absent or expired)."""
        raise NotImplementedError

    # Events (Barrier) --------------------------------------------------------------

    def notify(self, key: str, count: int, ttl: int) -> None:
        """Release ``count`` waiters on ``key``, now or when they arrive.

        Parameters:
          key: the event key.
          count: how many ``wait`` calls this releases.
          ttl: how long unclaimed releases are kept, in milliseconds.
        """
        raise NotImplementedError

    def wait(self, key: str, timeout: int) -> bool:
        """Block until a release from :meth:`notify` on ``key`` can be claimed.

        Parameters:
          key: the event key.
          timeout: the longest wait, in milliseconds.

        Returns:
          True when a release was claimed, False on timeout.
        """
        raise NotImplementedError

    # Limiters ---------------------------------------------------------------------

    def acquire_lease(self, key: str, holder: str, limit: int, ttl: int) -> bool:
        """Give ``holder`` one of ``limit`` leases on ``key`` if one is free.

        Leases expire on their own after ``ttl`` milliseconds, so a holder that
        crashed does not keep its lease forever.

        Returns:
          True when the lease was granted.
        """
        raise NotImplementedError

    def release_lease(self, key: str, holder: str) -> None:
        """Give back ``holder``'s lease on ``key`` (nothing happens if it expired)."""
        raise NotImplementedError

    def add_to_window(self, key: str, event: str, limit: int, window: int) -> bool:
        """Record ``event`` if fewer than ``limit`` events happened on ``key``
        in the last ``window`` milliseconds.

        Returns:
          True when the event was recorded.
        """
        raise NotImplementedError

    def incr_bucket(self, key: str, limit: int, bucket: int) -> bool:
        """Count one event in the current fixed time bucket of ``key`` if the
        bucket holds fewer than ``limit`` events.

        Buckets are ``bucket`` milliseconds long and aligned on the Unix epoch.

        Returns:
          True when the event was counted.
        """
        raise NotImplementedError

    # Housekeeping ------------------------------------------------------------------

    def flush(self) -> None:
        """Forget every key this backend owns."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's connections (nothing by default)."""

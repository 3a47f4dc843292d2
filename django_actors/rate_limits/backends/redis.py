"""A Redis rate limiter backend.

Every limiter operation is one Lua script, so it is atomic across processes
and hosts, and reads Redis's clock (``TIME``), so hosts with skewed clocks
still agree on windows and buckets. Waiting blocks in ``BLPOP`` on a
notification list: no polling.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.commands.core import Script

from ...errors import ConnectionClosed
from ..backend import RateLimiterBackend

DEFAULT_URL = "redis://127.0.0.1:6379/0"

#: The longest single BLPOP, in seconds; longer waits issue several.
_MAX_BLOCK = 30.0

# Lua: the server's clock in milliseconds.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] set; ARGV member, ttl. Returns the set's size.
_ADD_MEMBER = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SCARD', KEYS[1])
"""

# KEYS[1] sorted set holder -> expiry; ARGV holder, limit, ttl. Returns 1 when granted.
_ACQUIRE_LEASE = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""
)

# KEYS[1] sorted set event -> time; ARGV event, limit, window. Returns 1 when recorded.
_ADD_TO_WINDOW = (
    _NOW
    + """
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"""
)

# KEYS[1] hash {i: bucket index, n: count}; ARGV limit, bucket. Returns 1 when counted.
_INCR_BUCKET = (
    _NOW
    + """
local size = tonumber(ARGV[2])
local index = math.floor(now / size)
local stored = redis.call('HMGET', KEYS[1], 'i', 'n')
local count = 0
if tonumber(stored[1]) == index then
  count = tonumber(stored[2]) or 0
end
if count >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'i', string.format('%d', index), 'n', count + 1)
redis.call('PEXPIRE', KEYS[1], size - (now % size))
return 1
"""
)


@contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError) as exc:
        raise ConnectionClosed(f"lost the connection to Redis: {exc}") from exc


class RedisBackend(RateLimiterBackend):
    """Rate limiter state in Redis.

    Give at most one of ``url``, ``client`` and ``cache``; with none of them
    the backend connects to ``redis://127.0.0.1:6379/0``.

    Parameters:
      url: a Redis URL; the backend opens (and closes) its own client.
      client: a ``redis.Redis`` client to use.
      cache: the alias of a django-redis entry in ``CACHES`` whose connection
        to reuse.
      namespace: prefix of every key.
      **client_options: extra arguments for ``redis.Redis.from_url``.

    Raises:
      ValueError: when more than one source is given, or ``cache`` is not a
        django-redis cache.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        cache: str | None = None,
        namespace: str = "django-actors-rl",
        **client_options: Any,
    ) -> None:
        given = [name for name, value in (("url", url), ("client", client), ("cache", cache)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of url, client and cache (got {', '.join(given)})")
        if client_options and (client is not None or cache is not None):
            raise ValueError("client options only apply with url=")
        if not namespace:
            raise ValueError("namespace must not be empty")
        self._owns_client = client is None and cache is None
        if client is not None:
            self.client = client
        elif cache is not None:
            self.client = _cache_connection(cache)
        else:
            self.client = redis.Redis.from_url(url or DEFAULT_URL, **client_options)
        self.namespace = namespace
        self._add_member: Script = self.client.register_script(_ADD_MEMBER)
        self._acquire_lease: Script = self.client.register_script(_ACQUIRE_LEASE)
        self._add_to_window: Script = self.client.register_script(_ADD_TO_WINDOW)
        self._incr_bucket: Script = self.client.register_script(_INCR_BUCKET)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}:{kind}:{key}"

    def add(self, key: str, value: int, ttl: int) -> bool:
        with _translate_errors():
            return bool(self.client.set(self._key("value", key), value, px=ttl, nx=True))

    def get(self, key: str) -> int | None:
        with _translate_errors():
            value = self.client.get(self._key("value", key))
        return None if value is None else int(value)

    def add_member(self, key: str, member: str, ttl: int) -> int:
        with _translate_errors():
            return int(self._add_member(keys=[self._key("members", key)], args=[member, ttl]))

    def count_members(self, key: str) -> int:
        with _translate_errors():
            return int(self.client.scard(self._key("members", key)))

    def notify(self, key: str, count: int, ttl: int) -> None:
        if count <= 0:
            return
        name = self._key("events", key)
        with _translate_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(name, *([1] * count))
            pipe.pexpire(name, ttl)
            pipe.execute()

    def _block_limit(self) -> float:
        # A BLPOP longer than the client's socket timeout would fail as a timeout.
        socket_timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:
            return min(_MAX_BLOCK, float(socket_timeout) / 2)
        return _MAX_BLOCK

    def wait(self, key: str, timeout: int) -> bool:
        name = self._key("events", key)
        deadline = time.monotonic() + max(timeout, 0) / 1000
        limit = self._block_limit()
        with _translate_errors():
            while True:
                remaining = deadline - time.monotonic()
                if remaining < 0.001:
                    # BLPOP's 0 means "forever": take a release only if one is there.
                    return self.client.lpop(name) is not None
                if self.client.blpop([name], timeout=min(remaining, limit)) is not None:
                    return True

    def acquire_lease(self, key: str, holder: str, limit: int, ttl: int) -> bool:
        with _translate_errors():
            return bool(self._acquire_lease(keys=[self._key("lease", key)], args=[holder, limit, ttl]))

    def release_lease(self, key: str, holder: str) -> None:
        with _translate_errors():
            self.client.zrem(self._key("lease", key), holder)

    def add_to_window(self, key: str, event: str, limit: int, window: int) -> bool:
        with _translate_errors():
            return bool(self._add_to_window(keys=[self._key("window", key)], args=[event, limit, window]))

    def incr_bucket(self, key: str, limit: int, bucket: int) -> bool:
        with _translate_errors():
            return bool(self._incr_bucket(keys=[self._key("bucket", key)], args=[limit, bucket]))

    def flush(self) -> None:
        """Delete every key under this backend's namespace (SCAN, not KEYS)."""
        with _translate_errors():
            batch: list[Any] = []
            for name in self.client.scan_iter(match=f"{self.namespace}:*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    self.client.delete(*batch)
                    batch.clear()
            if batch:
                self.client.delete(*batch)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _cache_connection(alias: str) -> redis.Redis:
    from django.core.cache import caches
    from django.core.cache.backends.base import InvalidCacheBackendError

    try:
        caches[alias]
    except InvalidCacheBackendError as exc:
        raise ValueError(f"cache={alias!r}: there is no such entry in CACHES") from exc
    # django-redis ships no type information; import it as a plain module.
    get_redis_connection = importlib.import_module("django_redis").get_redis_connection
    try:
        connection: redis.Redis = get_redis_connection(alias)
    except NotImplementedError as exc:
        raise ValueError(f"cache={alias!r} is not a django-redis cache (django_redis.cache.RedisCache)") from exc
    return connection

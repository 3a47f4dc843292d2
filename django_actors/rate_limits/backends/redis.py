"""A Redis rate limiter backend.

Every limiter operation is one Lua script, so it is atomic across processes
and hosts, and reads Redis's clock (``TIME``), so hosts with skewed clocks
still agree on windows and buckets. Waiting blocks in ``BLPOP`` on a
notification list: no polling.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.commands.core import Script

from ...redis_connection import RedisConnection, translate_errors
from ..backend import RateLimiterBackend

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

_SCRIPTS = {
    "add_member": _ADD_MEMBER,
    "acquire_lease": _ACQUIRE_LEASE,
    "add_to_window": _ADD_TO_WINDOW,
    "incr_bucket": _INCR_BUCKET,
}


class RedisBackend(RateLimiterBackend):
    """Rate limiter state in Redis.

    Give at most one of ``url``, ``client`` and ``cache`` (as for the Redis
    broker and results backend); with none of them the backend connects to
    ``redis://127.0.0.1:6379/0``. A client built from a URL is rebuilt in a
    forked child.

    Parameters:
      url: a Redis URL; the backend opens (and closes) its own client.
      client: a ``redis.Redis`` client to use.
      cache: a ``CACHES`` alias (django-redis or Django's ``RedisCache``)
        whose connection to reuse.
      namespace: prefix of every key.
      **parameters: redis-py connection options for a client built here.

    Raises:
      ValueError: when more than one of url, client and cache is given, or
        the namespace is empty.
      django.core.exceptions.ImproperlyConfigured: when ``cache`` is not a
        Redis cache (raised on first use).
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        cache: str | None = None,
        namespace: str = "django-actors-rl",
        **parameters: Any,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise ValueError(f"namespace must be a non-empty string without spaces, not {namespace!r}")
        self.connection = RedisConnection(url=url, client=client, cache=cache, options=parameters)
        self.namespace = namespace
        self._scripts: tuple[int, dict[str, Script]] | None = None

    @property
    def client(self) -> redis.Redis:
        """The redis-py client of this process."""
        return self.connection.client

    def _script(self, name: str) -> Script:
        client = self.client
        bound = self._scripts
        if bound is None or bound[0] != id(client):
            bound = (id(client), {key: client.register_script(source) for key, source in _SCRIPTS.items()})
            self._scripts = bound
        return bound[1][name]

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}:{kind}:{key}"

    def add(self, key: str, value: int, ttl: int) -> bool:
        with translate_errors("creating a barrier"):
            return bool(self.client.set(self._key("value", key), value, px=ttl, nx=True))

    def get(self, key: str) -> int | None:
        with translate_errors("reading a barrier"):
            value = self.client.get(self._key("value", key))
        return None if value is None else int(value)

    def add_member(self, key: str, member: str, ttl: int) -> int:
        with translate_errors("recording an arrival"):
            return int(self._script("add_member")(keys=[self._key("members", key)], args=[member, ttl]))

    def count_members(self, key: str) -> int:
        with translate_errors("counting arrivals"):
            return int(self.client.scard(self._key("members", key)))

    def notify(self, key: str, count: int, ttl: int) -> None:
        if count <= 0:
            return
        name = self._key("events", key)
        with translate_errors("releasing a barrier"), self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(name, *([1] * count))
            pipe.pexpire(name, ttl)
            pipe.execute()

    def wait(self, key: str, timeout: int) -> bool:
        name = self._key("events", key)
        deadline = time.monotonic() + max(timeout, 0) / 1000
        # Each BLPOP ends before the client's socket timeout would fire.
        limit = self.connection.max_block(_MAX_BLOCK)
        with translate_errors("waiting at a barrier"):
            while True:
                remaining = deadline - time.monotonic()
                if remaining < 0.001:
                    # BLPOP's 0 means "forever": take a release only if one is there.
                    return self.client.lpop(name) is not None
                if self.client.blpop([name], timeout=min(remaining, limit)) is not None:
                    return True

    def acquire_lease(self, key: str, holder: str, limit: int, ttl: int) -> bool:
        with translate_errors("acquiring a rate limiter lease"):
            return bool(self._script("acquire_lease")(keys=[self._key("lease", key)], args=[holder, limit, ttl]))

    def release_lease(self, key: str, holder: str) -> None:
        with translate_errors("releasing a rate limiter lease"):
            self.client.zrem(self._key("lease", key), holder)

    def add_to_window(self, key: str, event: str, limit: int, window: int) -> bool:
        with translate_errors("acquiring a window rate limiter"):
            return bool(self._script("add_to_window")(keys=[self._key("window", key)], args=[event, limit, window]))

    def incr_bucket(self, key: str, limit: int, bucket: int) -> bool:
        with translate_errors("acquiring a bucket rate limiter"):
            return bool(self._script("incr_bucket")(keys=[self._key("bucket", key)], args=[limit, bucket]))

    def flush(self) -> None:
        """Delete every key under this backend's namespace (SCAN, not KEYS)."""
        with translate_errors("flushing rate limiter keys"):
            batch: list[Any] = []
            for name in self.client.scan_iter(match=f"{self.namespace}:*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    self.client.delete(*batch)
                    batch.clear()
            if batch:
                self.client.delete(*batch)

    def close(self) -> None:
        """Close the client if it was built here; a given client or cache's is left open."""
        self.connection.close()

"""The Redis results backend.

Every record is a string key holding the encoded ``{"v": value}`` with a TTL.
Blocking gets do not poll: a waiter registers itself in ``<key>:w`` (a
counter) in the same script that finds the key missing, then blocks with
``BLPOP`` on ``<key>:wake``; the scripts that store records push one token
per registered waiter onto that list. Storing and registering are both
atomic, so a wake-up cannot be missed.

Sets (group completion) are Redis sets; ``_add_member`` and ``_claim`` are
Lua scripts, ``_count_members`` is one pipelined round trip. Every key
written is also indexed in ``<namespace>:index`` (a sorted set by expiry,
trimmed as it goes) so that :meth:`RedisBackend.flush` needs no ``KEYS`` or
``SCAN``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from ...encoder import Encoder
from ...errors import ConnectionClosed
from ...redis_connection import CONNECTION_ERRORS, RedisConnection, translate_errors
from ..backend import ResultBackend

#: How long a wake-up token waits for its waiter, in milliseconds.
WAKE_TTL = 60_000

_PRELUDE = """
local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function wake(key)
  local n = tonumber(redis.call('get', key .. ':w'))
  if n then
    redis.call('del', key .. ':w')
    for i = 1, math.min(n, 1000) do redis.call('rpush', key .. ':wake', '1') end
    redis.call('pexpire', key .. ':wake', WAKE_TTL)
  end
end
local function store(index, key, data, ttl, expires)
  redis.call('set', key, data, 'PX', ttl)
  redis.call('zadd', index, expires, key)
  wake(key)
end
""".replace("WAKE_TTL", str(WAKE_TTL))

# KEYS: index; ARGV: ttl, then (key, data) pairs
_STORE = _PRELUDE + """
local ttl = tonumber(ARGV[1])
local now = now_ms()
for i = 2, #ARGV, 2 do store(KEYS[1], ARGV[i], ARGV[i + 1], ttl, now + ttl) end
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
return 1
"""

# KEYS: key; ARGV: ms to keep the registration. Returns the value, or nil after registering.
_PREPARE_WAIT = """
local value = redis.call('get', KEYS[1])
if value then return value end
redis.call('incr', KEYS[1] .. ':w')
redis.call('pexpire', KEYS[1] .. ':w', ARGV[1])
return false
"""

# KEYS: set, index; ARGV: member, ttl, then (key, data) pairs. Returns {added, size}.
_ADD_MEMBER = _PRELUDE + """
local ttl = tonumber(ARGV[2])
local now = now_ms()
for i = 3, #ARGV, 2 do store(KEYS[2], ARGV[i], ARGV[i + 1], ttl, now + ttl) end
local added = redis.call('sadd', KEYS[1], ARGV[1])
redis.call('pexpire', KEYS[1], ttl)
redis.call('zadd', KEYS[2], now + ttl, KEYS[1])
return {added, redis.call('scard', KEYS[1])}
"""

# KEYS: key, index; ARGV: data, ttl. Returns nil when set here, else the current value.
_CLAIM = _PRELUDE + """
local current = redis.call('get', KEYS[1])
if current then return current end
local ttl = tonumber(ARGV[2])
store(KEYS[2], KEYS[1], ARGV[1], ttl, now_ms() + ttl)
return false
"""

# KEYS: index; ARGV: keys to delete
_DELETE = """
for i = 1, #ARGV do
  redis.call('del', ARGV[i], ARGV[i] .. ':w', ARGV[i] .. ':wake')
  redis.call('zrem', KEYS[1], ARGV[i])
end
return #ARGV
"""

# KEYS: index; ARGV: batch size. Deletes one batch; returns how many.
_FLUSH = """
local keys = redis.call('zrange', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for _, key in ipairs(keys) do
  redis.call('del', key, key .. ':w', key .. ':wake')
end
if #keys > 0 then redis.call('zrem', KEYS[1], unpack(keys)) end
return #keys
"""


class RedisBackend(ResultBackend):
    """Results stored in Redis.

    Parameters:
      url: a Redis URL.
      client: a ``redis.Redis`` to use instead.
      cache: a ``CACHES`` alias whose Redis connection to reuse.
      namespace: the prefix of every key.
      encoder: the encoder for stored values (the global one by default).
      use_namespace_prefix_keys: readable result keys, see :class:`ResultBackend`.
      parameters: redis-py connection options for a client built here.
    """

    blocks_without_polling = True

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        cache: str | None = None,
        namespace: str = "django-actors-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
        **parameters: Any,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise ValueError(f"namespace must be a non-empty string without spaces, not {namespace!r}.")
        super().__init__(namespace=namespace, encoder=encoder, use_namespace_prefix_keys=use_namespace_prefix_keys)
        self.connection = RedisConnection(url=url, client=client, cache=cache, options=parameters)
        self._index = f"{namespace}:index"
        self._scripts: tuple[int, dict[str, Any]] | None = None

    @property
    def client(self) -> redis.Redis:
        """The redis-py client of this process."""
        return self.connection.client

    def _script(self, name: str) -> Any:
        client = self.client
        bound = self._scripts
        if bound is None or bound[0] != id(client):
            sources = {
                "store": _STORE,
                "prepare_wait": _PREPARE_WAIT,
                "add_member": _ADD_MEMBER,
                "claim": _CLAIM,
                "delete": _DELETE,
                "flush": _FLUSH,
            }
            # Run through the connection's lane (see redis_connection.Lane).
            bound = (id(client), {key: self.connection.register_script(src) for key, src in sources.items()})
            self._scripts = bound
        return bound[1][name]

    def _encode(self, value: Any) -> bytes:
        return self.encoder.encode({"v": value})

    def _decode(self, data: Any) -> Any:
        if data is None:
            return None
        return self.encoder.decode(data)["v"]

    @staticmethod
    def _ttl(ttl: int) -> int:
        return max(int(ttl), 1)

    # Primitives ---------------------------------------------------------------------

    def _get_many(self, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        lane = self.connection.lane()
        with translate_errors("reading results"):
            values = lane.execute("MGET", *keys) if lane is not None else self.client.mget(keys)
        return [self._decode(value) for value in values]

    def _store_many(self, records: Mapping[str, Any], ttl: int) -> None:
        if not records:
            return
        args: list[Any] = [self._ttl(ttl)]
        for key, value in records.items():
            args += (key, self._encode(value))
        with translate_errors("storing results"):
            self._script("store")(keys=[self._index], args=args)

    def _wait(self, key: str, timeout: int) -> Any:
        deadline = time.monotonic() + timeout / 1000
        if timeout <= 0:
            return self._get(key)
        prepare = self._script("prepare_wait")
        while True:
            remaining = deadline - time.monotonic()
            with translate_errors("waiting for a result"):
                data = prepare(keys=[key], args=[max(int(remaining * 1000), 0) + 1000])
            if data is not None:
                return self._decode(data)
            if remaining <= 0:
                return None
            block = min(remaining, self.connection.max_block())
            try:
                self.client.blpop([f"{key}:wake"], timeout=max(round(block, 3), 0.001))
            except redis.exceptions.TimeoutError:
                continue
            except CONNECTION_ERRORS as exc:
                raise ConnectionClosed(f"Redis connection lost while waiting for a result: {exc}") from exc

    def _add_member(
        self, set_key: str, member: int, ttl: int, records: Mapping[str, Any] | None = None
    ) -> tuple[bool, int]:
        args: list[Any] = [int(member), self._ttl(ttl)]
        for key, value in (records or {}).items():
            args += (key, self._encode(value))
        with translate_errors("recording a finished member"):
            added, size = self._script("add_member")(keys=[set_key, self._index], args=args)
        return bool(added), int(size)

    def _count_members(self, set_keys: list[str]) -> list[int]:
        if not set_keys:
            return []
        with translate_errors("counting members"):
            pipe = self.client.pipeline(transaction=False)
            for key in set_keys:
                pipe.scard(key)
            return [int(n) for n in pipe.execute()]

    def _claim(self, key: str, token: str, ttl: int) -> bool:
        with translate_errors("claiming"):
            current = self._script("claim")(keys=[key, self._index], args=[self._encode(token), self._ttl(ttl)])
        return current is None or bool(self._decode(current) == token)

    def _delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        with translate_errors("deleting results"):
            self._script("delete")(keys=[self._index], args=keys)

    def flush(self) -> None:
        """Delete every key this backend wrote (found through its index)."""
        with translate_errors("flushing results"):
            while self._script("flush")(keys=[self._index], args=[1000]):
                pass

    def close(self) -> None:
        self.connection.close()
        self._scripts = None

    def __repr__(self) -> str:
        return f"<RedisBackend namespace={self.namespace!r}>"

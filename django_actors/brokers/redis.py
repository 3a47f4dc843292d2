"""The Redis broker: sorted sets and hashes driven by Lua scripts.

Data structures
---------------
For namespace ``ns`` and queue ``q``:

``ns:q:q``              ZSET of ready messages. The score is the priority (lower
                        runs first); the member is ``<sequence>:<priority>``
                        with a zero-padded sequence, so members of equal
                        priority pop in send order (Redis orders equal scores
                        by member).
``ns:q:q:msgs``         HASH member -> encoded message, until acked or dead.
``ns:q:q:delayed``      ZSET member -> eta (ms); moved to the ready set when
                        due, inside the fetch script.
``ns:q:q:ack:<worker>`` ZSET of a worker's unacked members (score: priority).
``ns:q:q:notify``       LIST of at most one wake-up token, for blocking fetches.
``ns:q:q:dead``         ZSET message_id -> time of death (an index).
``ns:dead:<id>``        HASH of one dead letter (payload, queue, reason), with
                        a TTL of ``dead_message_ttl``.
``ns:queues``           SET of queue names; ``ns:workers`` ZSET worker ->
                        last heartbeat (Redis server time); ``ns:seq`` the
                        sequence counter.

Why sorted sets and Lua rather than Streams
-------------------------------------------
Streams with consumer groups give a pending list per consumer, but no
priorities (a stream per level, read by one blocking call, does not return
the highest level first), and their reclaiming (``XAUTOCLAIM``) is driven by
per-message idle time, so a long-running actor looks dead unless its worker
keeps re-claiming each message. A sorted set keyed by (priority, sequence)
gives priorities across the whole queue; per-worker ``ack`` sets plus a
heartbeat per worker *process* (a thread) give the at-least-once guarantee:
a message leaves Redis only when a script acks or dead-letters it, and the
unacked messages of a worker whose heartbeat lapsed are moved back to the
ready set by another worker. Every operation is one Lua script, atomic, and
batched: enqueue of up to 1,000 messages, fetch of ``count`` messages (which
also carries the acks buffered since the last round trip and promotes due
delayed messages), acks, nacks and requeues. No ``KEYS``/``SCAN``: queues
and workers are kept in sets.

Safety details
--------------
- An ack only counts if the member is still in this worker's ack set, so a
  worker that was presumed dead and comes back can never ack a message that
  was handed to another worker; nothing is acked twice.
- Acks are batched (group commit: the first thread to ack sends what has
  piled up, the others return) and a failed batch is kept and sent again;
  acks and nacks are idempotent.
- If a fetch's reply is lost (Redis restarting), the fetched messages sit in
  this worker's ack set: the consumer resynchronises its ack set with what it
  really holds after any error, and every few seconds.
- A worker only reaps others after its own heartbeats have succeeded for a
  full ``heartbeat_timeout``, so after a Redis outage live workers get the
  time to beat again before anyone is declared dead.
- Garbage never stops a consumer: an undecodable or oversized payload becomes
  a failed message that the worker dead-letters with its reason; a list that
  someone ``LPUSH``-ed onto the queue key is adopted, each element becoming a
  message; any other foreign value at the queue key is renamed aside. A send
  that meets a key of the wrong type (the queue, its payloads, its delayed
  set, the sequence...) repairs the keys the same way, then stores its
  message once.
- After a fork the client, the worker id and the heartbeat are new; the
  heartbeat thread starts in the process that consumes.

Scripts derive some key names (other queues, other workers), so this broker
needs one Redis (with Sentinel for failover), not Redis Cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis

from ..broker import Broker, Consumer, MessageProxy, validate_queue_name
from ..encoder import get_encoder
from ..errors import ConnectionClosed, DecodeError, MessageTooLarge, QueueJoinTimeout, QueueNotFound
from ..message import Message, current_millis
from ..redaction import mask_url
from ..redis_connection import CONNECTION_ERRORS, SPIN_WAIT, RedisConnection, translate_errors

logger = logging.getLogger(__name__)

#: Messages per enqueue script call.
ENQUEUE_CHUNK = 1000
#: Dead letters moved or deleted per script call.
DEAD_CHUNK = 1000
#: The longest a fetch holds its count to (messages per round trip).
MAX_FETCH = 1000
#: dramatiq's denominator for its ``maintenance_chance`` (maintenance ran on a
#: random fraction of its commands). Kept so imports keep working; here the
#: heartbeat thread does the maintenance (redelivery, dead-letter expiry) on
#: a clock, so there is no chance to set.
MAINTENANCE_SCALE = 1_000_000

_LUA_PRELUDE = """
local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function prio(member)
  return tonumber(string.match(member, ':(-?%d+)$')) or 0
end
local function member_for(seq, priority)
  return string.format('%016d', seq) .. ':' .. priority
end
local function notify(key)
  redis.call('lpush', key, '1')
  redis.call('ltrim', key, 0, 0)
end
local function zadd_chunked(key, pairs)
  for i = 1, #pairs, 2000 do
    redis.call('zadd', key, unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
end
-- A key holding something else than its type: renamed aside, never deleted.
local function move_aside(key)
  local stamp = now_ms()
  local n = 0
  local target = key .. ':foreign:' .. stamp
  while redis.call('exists', target) == 1 do
    n = n + 1
    target = key .. ':foreign:' .. stamp .. '.' .. n
  end
  redis.call('rename', key, target)
  return target
end
-- Make a queue key a sorted set again. Someone pushed onto it (a list): each
-- element becomes a message (returns 1). Any other value: moved aside
-- (returns 2). A sorted set or nothing: 0.
local function adopt(ready, msgs, seq)
  local kind = redis.call('type', ready)['ok']
  if kind == 'list' then
    local items = redis.call('lrange', ready, 0, -1)
    redis.call('del', ready)
    local last = redis.call('incrby', seq, #items)
    local fields, scores = {}, {}
    for i, payload in ipairs(items) do
      local member = member_for(last - #items + i, 0)
      fields[#fields + 1] = member
      fields[#fields + 1] = payload
      scores[#scores + 1] = 0
      scores[#scores + 1] = member
    end
    for i = 1, #fields, 2000 do
      redis.call('hset', msgs, unpack(fields, i, math.min(i + 1999, #fields)))
    end
    zadd_chunked(ready, scores)
    return 1
  elseif kind ~= 'zset' and kind ~= 'none' then
    move_aside(ready)
    return 2
  end
  return 0
end
-- Move every member of a worker's ack set for queue q back to q's ready set.
local function release(ns, q, worker)
  local ack = ns .. ':q:' .. q .. ':ack:' .. worker
  local held = redis.call('zrange', ack, 0, -1, 'WITHSCORES')
  if #held == 0 then return 0 end
  local adds = {}
  for i = 1, #held, 2 do
    adds[#adds + 1] = held[i + 1]
    adds[#adds + 1] = held[i]
  end
  zadd_chunked(ns .. ':q:' .. q, adds)
  redis.call('del', ack)
  notify(ns .. ':q:' .. q .. ':notify')
  return #held / 2
end
"""

# KEYS: ready, msgs, delayed, notify, seq, queues
# ARGV: queue name, eta ('' = now), then (priority, payload) pairs
# Self-contained (no prelude to set up): it runs for every send().
_ENQUEUE = """
local n = (#ARGV - 2) / 2
local last = redis.call('incrby', KEYS[5], n)
local eta = ARGV[2]
local fields, scores = {}, {}
for i = 1, n do
  local priority = ARGV[1 + 2 * i]
  local member = string.format('%016d:%s', last - n + i, priority)
  fields[2 * i - 1] = member
  fields[2 * i] = ARGV[2 + 2 * i]
  if eta == '' then scores[2 * i - 1] = priority else scores[2 * i - 1] = eta end
  scores[2 * i] = member
end
-- The sorted set first: a foreign value there fails the script before it
-- wrote anything (a member whose payload is missing is skipped by fetch).
if eta == '' then
  redis.call('zadd', KEYS[1], unpack(scores))
  redis.call('hset', KEYS[2], unpack(fields))
  -- Consumers block only after finding the queue empty, and a fetch that
  -- leaves messages behind wakes the next one: a token is needed only when
  -- the queue was empty until now.
  if redis.call('zcard', KEYS[1]) ~= n then return n end
else
  redis.call('zadd', KEYS[3], unpack(scores))
  redis.call('hset', KEYS[2], unpack(fields))
  -- always: waiting consumers recompute when the next message is due
end
-- The message is stored: a foreign value at the wake-up list or the queue
-- registry must not fail the script now (the caller would send it again).
local woke = redis.pcall('lpush', KEYS[4], '1')
local registered = redis.pcall('sadd', KEYS[6], ARGV[1])
if type(woke) == 'table' or type(registered) == 'table' then return -n end
redis.call('ltrim', KEYS[4], 0, 0)
return n
"""

# The same for one message (send()), without the tables of the batch script.
# KEYS: as _ENQUEUE; ARGV: queue name, eta ('' = now), priority, payload
_ENQUEUE_ONE = """
local member = string.format('%016d:%s', redis.call('incr', KEYS[5]), ARGV[3])
if ARGV[2] == '' then
  redis.call('zadd', KEYS[1], ARGV[3], member)
  redis.call('hset', KEYS[2], member, ARGV[4])
  if redis.call('zcard', KEYS[1]) ~= 1 then return 1 end  -- not empty before: no token
else
  redis.call('zadd', KEYS[3], ARGV[2], member)
  redis.call('hset', KEYS[2], member, ARGV[4])
end
local woke = redis.pcall('lpush', KEYS[4], '1')  -- stored: as in _ENQUEUE
local registered = redis.pcall('sadd', KEYS[6], ARGV[1])
if type(woke) == 'table' or type(registered) == 'table' then return -1 end
redis.call('ltrim', KEYS[4], 0, 0)
return 1
"""

# Run when an enqueue met a key of the wrong type: every key the enqueue
# writes gets its type back; foreign values are moved aside (a list at the
# queue key is adopted as messages), never deleted.
# KEYS: as _ENQUEUE. Returns the names of the keys that were fixed.
_REPAIR = (
    _LUA_PRELUDE
    + """
local fixed = {}
local seq = KEYS[5]
local kind = redis.call('type', seq)['ok']
if kind ~= 'none' and (kind ~= 'string' or not tonumber(redis.call('get', seq))) then
  move_aside(seq)
  fixed[#fixed + 1] = seq
end
local expected = {[2] = 'hash', [3] = 'zset', [4] = 'list', [6] = 'set'}
for i, want in pairs(expected) do
  kind = redis.call('type', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= want then
    move_aside(KEYS[i])
    fixed[#fixed + 1] = KEYS[i]
  end
end
if adopt(KEYS[1], KEYS[2], seq) ~= 0 then fixed[#fixed + 1] = KEYS[1] end
return fixed
"""
)

# KEYS: ready, msgs, delayed, ack, notify, workers, seq, queues
# ARGV: worker id, now (client ms), count, queue name, then members to ack
# Returns {next_eta or -1, foreign (0/1/2), member, payload, member, payload...}
_FETCH = (
    _LUA_PRELUDE
    + """
local ready, msgs, delayed, ack = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for i = 5, #ARGV do
  if redis.call('zrem', ack, ARGV[i]) == 1 then redis.call('hdel', msgs, ARGV[i]) end
end
if not redis.call('zscore', KEYS[6], ARGV[1]) then
  redis.call('zadd', KEYS[6], now_ms(), ARGV[1])
end
redis.call('sadd', KEYS[8], ARGV[4])
local foreign = adopt(ready, msgs, KEYS[7])
local due = redis.call('zrangebyscore', delayed, '-inf', ARGV[2], 'LIMIT', 0, 1000)
if #due > 0 then
  local adds = {}
  for _, member in ipairs(due) do
    adds[#adds + 1] = prio(member)
    adds[#adds + 1] = member
  end
  redis.call('zadd', ready, unpack(adds))
  redis.call('zrem', delayed, unpack(due))
end
local out = {-1, foreign}
local popped = redis.call('zpopmin', ready, ARGV[3])
if #popped > 0 then
  local members, adds = {}, {}
  for i = 1, #popped, 2 do
    members[#members + 1] = popped[i]
    adds[#adds + 1] = popped[i + 1]
    adds[#adds + 1] = popped[i]
  end
  redis.call('zadd', ack, unpack(adds))
  local payloads = redis.call('hmget', msgs, unpack(members))
  for i, member in ipairs(members) do
    if payloads[i] then
      out[#out + 1] = member
      out[#out + 1] = payloads[i]
    else
      redis.call('zrem', ack, member)  -- a member without a payload: nothing to deliver
    end
  end
  if redis.call('zcard', ready) > 0 then notify(KEYS[5]) end
end
if #out == 2 then
  local nxt = redis.call('zrange', delayed, 0, 0, 'WITHSCORES')
  if #nxt > 0 then out[1] = tonumber(nxt[2]) end
end
return out
"""
)

# KEYS: ack, msgs; ARGV: members
_ACK = """
local n = 0
for i = 1, #ARGV do
  if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
    redis.call('hdel', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: ack, msgs, dead index; ARGV: namespace, queue, ttl, then (member, message_id, reason) triples
_NACK = (
    _LUA_PRELUDE
    + """
local ns, q, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local n = 0
for i = 4, #ARGV, 3 do
  local member, id, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('zrem', KEYS[1], member) == 1 then
    local data = redis.call('hget', KEYS[2], member)
    redis.call('hdel', KEYS[2], member)
    if data then
      local key = ns .. ':dead:' .. id
      local old = redis.call('hget', key, 'queue')
      if old and old ~= q then redis.call('zrem', ns .. ':q:' .. old .. ':dead', id) end
      redis.call('del', key)
      redis.call('hset', key, 'data', data, 'queue', q, 'reason', reason, 'member', member, 'at', now)
      redis.call('pexpire', key, ttl)
      redis.call('zadd', KEYS[3], now, id)
      n = n + 1
    end
  end
end
redis.call('zremrangebyscore', KEYS[3], '-inf', now - ttl)
return n
"""
)

# KEYS: ack, ready, notify; ARGV: members (hand back unstarted messages)
_REQUEUE = (
    _LUA_PRELUDE
    + """
local n = 0
for i = 1, #ARGV do
  if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
    redis.call('zadd', KEYS[2], prio(ARGV[i]), ARGV[i])
    n = n + 1
  end
end
if n > 0 then notify(KEYS[3]) end
return n
"""
)

# KEYS: ack, ready, notify; ARGV: the members this consumer really holds
_RESYNC = (
    _LUA_PRELUDE
    + """
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = true end
local all = redis.call('zrange', KEYS[1], 0, -1, 'WITHSCORES')
local n = 0
for i = 1, #all, 2 do
  if not held[all[i]] then
    redis.call('zrem', KEYS[1], all[i])
    redis.call('zadd', KEYS[2], all[i + 1], all[i])
    n = n + 1
  end
end
if n > 0 then notify(KEYS[3]) end
return n
"""
)

# KEYS: workers, queues
# ARGV: namespace, worker id, heartbeat timeout, reap (0/1), dead ttl, release self (0/1)
# Returns {messages recovered, workers reaped}
_HEARTBEAT = (
    _LUA_PRELUDE
    + """
local ns, me = ARGV[1], ARGV[2]
local now = now_ms()
local queues = redis.call('smembers', KEYS[2])
local moved, reaped = 0, 0
if ARGV[6] == '1' then
  for _, q in ipairs(queues) do moved = moved + release(ns, q, me) end
  redis.call('zrem', KEYS[1], me)
  return {moved, 0}
end
redis.call('zadd', KEYS[1], now, me)
if ARGV[4] == '1' then
  local dead = redis.call('zrangebyscore', KEYS[1], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, 100)
  for _, worker in ipairs(dead) do
    for _, q in ipairs(queues) do moved = moved + release(ns, q, worker) end
    redis.call('zrem', KEYS[1], worker)
    reaped = reaped + 1
  end
  for _, q in ipairs(queues) do
    redis.call('zremrangebyscore', ns .. ':q:' .. q .. ':dead', '-inf', now - tonumber(ARGV[5]))
  end
end
return {moved, reaped}
"""
)


_SIZE = """
local function size(key, cmd)
  local kind = redis.call('type', key)['ok']
  if kind == 'list' then return redis.call('llen', key) end
  if kind ~= 'zset' then return 0 end
  return redis.call(cmd, key)
end
"""


# KEYS: ready, delayed, workers, dead index; ARGV: ack key prefix
# Returns {ready, delayed, in flight, dead}
_STATS = (
    _SIZE
    + """
local inflight = 0
for _, worker in ipairs(redis.call('zrange', KEYS[3], 0, -1)) do
  inflight = inflight + redis.call('zcard', ARGV[1] .. worker)
end
return {size(KEYS[1], 'zcard'), size(KEYS[2], 'zcard'), inflight, size(KEYS[4], 'zcard')}
"""
)

# KEYS: ready, msgs, delayed, notify, workers; ARGV: ack key prefix
_FLUSH = """
redis.call('del', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
for _, worker in ipairs(redis.call('zrange', KEYS[5], 0, -1)) do
  redis.call('del', ARGV[1] .. worker)
end
return 1
"""

# ARGV: namespace, mode ('requeue'/'purge'), then either ('queue', name, limit) or ('ids', id...)
# Returns how many dead letters were moved or deleted.
_DEAD = (
    _LUA_PRELUDE
    + """
local ns, mode = ARGV[1], ARGV[2]
local ids
if ARGV[3] == 'queue' then
  ids = redis.call('zrange', ns .. ':q:' .. ARGV[4] .. ':dead', 0, tonumber(ARGV[5]) - 1)
else
  ids = {}
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  local key = ns .. ':dead:' .. id
  local fields = redis.call('hmget', key, 'queue', 'data', 'member')
  local q = fields[1]
  if ARGV[3] == 'queue' then
    redis.call('zrem', ns .. ':q:' .. ARGV[4] .. ':dead', id)  -- seen (or expired): never again
  end
  if q then
    redis.call('zrem', ns .. ':q:' .. q .. ':dead', id)
    redis.call('del', key)
    if mode == 'requeue' and fields[2] then
      -- Back under its own member: its old place in the queue, and the same
      -- placeholder id if it cannot be decoded.
      local member = fields[3] or member_for(redis.call('incr', ns .. ':seq'), 0)
      local msgs = ns .. ':q:' .. q .. ':msgs'
      if redis.call('hexists', msgs, member) == 1 then
        member = member_for(redis.call('incr', ns .. ':seq'), prio(member))
      end
      redis.call('hset', msgs, member, fields[2])
      redis.call('zadd', ns .. ':q:' .. q, prio(member), member)
      redis.call('sadd', ns .. ':queues', q)
      notify(ns .. ':q:' .. q .. ':notify')
    end
    n = n + 1
  end
end
return {n, #ids}
"""
)

# KEYS: dead index; ARGV: namespace, limit
# Returns flat (id, queue, reason, at, data) tuples, newest first.
_LIST_DEAD = """
local ids = redis.call('zrevrange', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('hmget', ARGV[1] .. ':dead:' .. id, 'queue', 'reason', 'at', 'data')
  if f[1] then
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2] or ''
    out[#out + 1] = f[3] or '0'
    out[#out + 1] = f[4] or ''
  end
end
return out
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A dead-lettered message.

    ``message`` is ``None`` when the payload cannot be decoded; ``data``
    always holds the payload as it was.
    """

    message_id: str
    queue_name: str
    message: Message[Any] | None
    reason: str
    died_at: int
    data: bytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueueStats:
    """How many messages a queue holds, by state."""

    ready: int
    delayed: int
    in_flight: int
    dead: int


def _foreign_value(exc: BaseException) -> bool:
    """Whether a script failed on a key of the wrong type (before writing)."""
    text = str(exc)
    return text.startswith("WRONGTYPE") or "value is not an integer" in text


def _needs_repair(reply: Any) -> bool:
    """Whether an enqueue reply says a key held a foreign value."""
    if isinstance(reply, Exception):
        return _foreign_value(reply)
    return isinstance(reply, int) and reply < 0


class _Scripts:
    """The broker's Lua scripts, bound to the connection's current client
    (they run through its lane)."""

    def __init__(self, connection: RedisConnection, spin_wait: int) -> None:
        # Enqueueing spins for its reply (a send() waits for it); the
        # worker's own calls sleep, leaving the CPU to the others.
        self.enqueue = connection.register_script(_ENQUEUE, spin=spin_wait)
        self.enqueue_one = connection.register_script(_ENQUEUE_ONE, spin=spin_wait)
        self.repair = connection.register_script(_REPAIR)
        self.fetch = connection.register_script(_FETCH)
        self.ack = connection.register_script(_ACK)
        self.nack = connection.register_script(_NACK)
        self.requeue = connection.register_script(_REQUEUE)
        self.resync = connection.register_script(_RESYNC)
        self.heartbeat = connection.register_script(_HEARTBEAT)
        self.stats = connection.register_script(_STATS)
        self.flush = connection.register_script(_FLUSH)
        self.dead = connection.register_script(_DEAD)
        self.list_dead = connection.register_script(_LIST_DEAD)


class _ProcessState:
    """What belongs to one process: the worker id, the heartbeat, the consumers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.worker_id = f"{socket.gethostname()}.{self.pid}.{uuid.uuid4().hex[:12]}"
        self.heartbeat: _Heartbeat | None = None
        self.registered = False
        self.consumers: set[RedisConsumer] = set()
        self.lock = threading.Lock()


class RedisBroker(Broker):
    """A broker backed by Redis.

    Parameters:
      url: a Redis URL (``redis://host:6379/0``).
      client: a ``redis.Redis`` to use instead.
      cache: a ``CACHES`` alias whose Redis connection to reuse (django-redis
        or Django's ``RedisCache``).
      namespace: the prefix of every key.
      heartbeat_timeout: milliseconds after which a worker that has not sent
        a heartbeat is presumed dead and its unacked messages are redelivered.
      dead_message_ttl: how long dead letters are kept, in milliseconds.
      middleware: the middleware; the defaults when ``None``.
      max_message_size: the largest encoded message, in bytes, at send and receive.
      spin_wait: how long an enqueue polls for Redis's reply before its thread
        sleeps, in microseconds; 0 to sleep at once. Halves ``send()`` on a
        local Redis for the same CPU; it backs off by itself when replies
        come later (see :mod:`django_actors.redis_connection`).
      parameters: redis-py connection options (``host=``, ``socket_timeout=``...)
        for a client built from ``url`` or from these options alone.

    Raises:
      ValueError: conflicting connection arguments or a bad timeout.
    """

    supports_batch_enqueue = True

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        cache: str | None = None,
        namespace: str = "django-actors",
        heartbeat_timeout: int = 60_000,
        dead_message_ttl: int = 7 * 24 * 3600 * 1000,
        middleware: Any = None,
        max_message_size: int = 4 * 1024 * 1024,
        spin_wait: int = SPIN_WAIT,
        **parameters: Any,
    ) -> None:
        for name, value in (("heartbeat_timeout", heartbeat_timeout), ("dead_message_ttl", dead_message_ttl)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number of milliseconds, not {value!r}.")
        if not isinstance(spin_wait, int) or isinstance(spin_wait, bool) or not 0 <= spin_wait <= 10_000:
            raise ValueError(f"spin_wait must be a number of microseconds from 0 to 10000, not {spin_wait!r}.")
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise ValueError(f"namespace must be a non-empty string without spaces, not {namespace!r}.")
        self.connection = RedisConnection(url=url, client=client, cache=cache, options=parameters)
        self.namespace = namespace
        self.heartbeat_timeout = heartbeat_timeout
        self.dead_message_ttl = dead_message_ttl
        self.spin_wait = spin_wait
        self._queues: set[str] = set()
        self._enqueue_keys_cache: dict[str, list[str]] = {}
        self._state_lock = threading.Lock()
        self._state = _ProcessState()
        self._scripts_for: tuple[int, _Scripts] | None = None
        super().__init__(middleware, max_message_size=max_message_size)

    # Plumbing -----------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        """The redis-py client of this process."""
        return self.connection.client

    @property
    def scripts(self) -> _Scripts:
        """The Lua scripts, bound to this process's client."""
        client = self.client
        bound = self._scripts_for
        if bound is None or bound[0] != id(client):
            bound = (id(client), _Scripts(self.connection, self.spin_wait))
            self._scripts_for = bound
        return bound[1]

    @property
    def state(self) -> _ProcessState:
        """This process's worker id, heartbeat and consumers (new after a fork)."""
        state = self._state
        if state.pid != os.getpid():
            with self._state_lock:
                if self._state.pid != os.getpid():
                    self._state = _ProcessState()
                state = self._state
        return state

    @property
    def worker_id(self) -> str:
        """The id this process's consumers hold messages under."""
        return self.state.worker_id

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _queue_key(self, queue_name: str, suffix: str = "") -> str:
        key = f"{self.namespace}:q:{queue_name}"
        return f"{key}:{suffix}" if suffix else key

    # Queues ----------------------------------------------------------------------

    def _declare_queue(self, queue_name: str) -> None:
        # Local only: the queue is registered in Redis by the first enqueue or
        # fetch, so declaring actors at import time never needs Redis.
        self._queues.add(queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self._queues)

    def _all_queues(self) -> set[str]:
        with translate_errors("listing queues"):
            names = self.client.smembers(self._key("queues"))
        return self._queues | {n.decode() if isinstance(n, bytes) else str(n) for n in names}

    # Enqueueing ---------------------------------------------------------------------

    def _priority(self, message: Message[Any]) -> int:
        actor = self.actors.get(message.actor_name)
        return actor.priority if actor is not None else 0

    def _enqueue_keys(self, queue_name: str) -> list[str]:
        keys = self._enqueue_keys_cache.get(queue_name)
        if keys is None:
            keys = [
                self._queue_key(queue_name),
                self._queue_key(queue_name, "msgs"),
                self._queue_key(queue_name, "delayed"),
                self._queue_key(queue_name, "notify"),
                self._key("seq"),
                self._key("queues"),
            ]
            self._enqueue_keys_cache[queue_name] = keys
        return keys

    def _enqueue_many(self, items: list[tuple[Message[Any], bytes]], eta: int | None) -> None:
        scripts = self.scripts
        when: Any = "" if eta is None else eta
        if len(items) == 1:  # send(): one message, nothing to group
            message, data = items[0]
            queue_name = message.queue_name
            keys = self._enqueue_keys(queue_name)
            one = [queue_name, when, self._priority(message), data]
            try:
                if scripts.enqueue_one(keys=keys, args=one) < 0:  # stored; a side key was foreign
                    self._repair(queue_name)
            except CONNECTION_ERRORS as exc:
                raise ConnectionClosed(
                    f"Redis connection lost while enqueueing to {queue_name!r}: {type(exc).__name__}: {exc}"
                ) from exc
            except redis.exceptions.ResponseError as exc:
                if not _foreign_value(exc):
                    raise
                # Nothing was stored: give the keys their types back, then store it.
                self._repair(queue_name)
                with translate_errors(f"enqueueing to {queue_name!r}"):
                    scripts.enqueue_one(keys=keys, args=one)
            return
        by_queue: dict[str, list[Any]] = defaultdict(list)
        priorities: dict[str, int] = {}
        for message, data in items:
            priority = priorities.get(message.actor_name)
            if priority is None:
                priority = priorities[message.actor_name] = self._priority(message)
            by_queue[message.queue_name].append((priority, data))
        calls: list[tuple[list[str], list[Any]]] = []
        names: list[str] = []
        for queue_name, entries in by_queue.items():
            keys = self._enqueue_keys(queue_name)
            for start in range(0, len(entries), ENQUEUE_CHUNK):
                args: list[Any] = [queue_name, when]
                for priority, data in entries[start : start + ENQUEUE_CHUNK]:
                    args += (priority, data)
                calls.append((keys, args))
                names.append(queue_name)
        # One script call per chunk of a queue, pipelined: Redis stores the
        # first chunk while the next ones are still on their way.
        with translate_errors(f"enqueueing to {', '.join(map(repr, by_queue))}"):
            replies = scripts.enqueue.call_many(calls, return_errors=True)
            failed = [i for i, reply in enumerate(replies) if isinstance(reply, Exception)]
            for i in failed:
                if not _foreign_value(replies[i]):
                    raise replies[i]
            for queue_name in dict.fromkeys(names[i] for i, reply in enumerate(replies) if _needs_repair(reply)):
                self._repair(queue_name)
            if failed:  # those chunks stored nothing: send them again, once
                again = scripts.enqueue.call_many([calls[i] for i in failed])
                for queue_name in dict.fromkeys(names[i] for i, reply in zip(failed, again, strict=True) if reply < 0):
                    self._repair(queue_name)

    def _repair(self, queue_name: str) -> None:
        """Give the keys an enqueue writes their types back after one held a
        foreign value (someone wrote into Redis by hand): such values are
        moved aside, a list at the queue key is adopted as messages."""
        with translate_errors(f"repairing the keys of queue {queue_name!r}"):
            fixed = self.scripts.repair(keys=self._enqueue_keys(queue_name))
        for key in fixed:
            logger.error(
                "Queue %r: key %r held a value of the wrong type; it was moved aside (or adopted, for a list "
                "at the queue key).", queue_name, _text(key),
            )  # fmt: skip

    def put_raw(self, queue_name: str, data: bytes, *, priority: int = 0) -> None:
        """Put raw bytes on a queue, bypassing encoding and checks (for tests
        and tools that feed other producers' payloads)."""
        validate_queue_name(queue_name)
        self.declare_queue(queue_name)
        self.scripts.enqueue(keys=self._enqueue_keys(queue_name), args=[queue_name, "", priority, data])

    # Consuming ----------------------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> RedisConsumer:
        """Return a consumer for a declared queue; starts this process's heartbeat.

        Raises:
          QueueNotFound: the queue is not declared.
          ConnectionClosed: Redis cannot be reached.
        """
        if queue_name not in self._queues:
            raise QueueNotFound(f"Queue {queue_name!r} is not declared.")
        self._ensure_heartbeat()
        consumer = RedisConsumer(self, queue_name, prefetch=prefetch, timeout=timeout)
        state = self.state
        with state.lock:
            state.consumers.add(consumer)
        return consumer

    def _ensure_heartbeat(self) -> None:
        state = self.state
        with state.lock:
            if state.heartbeat is not None and state.heartbeat.is_alive():
                return
            self._beat(reap=False)
            state.registered = True
            state.heartbeat = _Heartbeat(self, state)
            state.heartbeat.start()

    def _beat(self, *, reap: bool, release: bool = False) -> tuple[int, int]:
        state = self.state
        with translate_errors("sending a heartbeat"):
            moved, reaped = self.scripts.heartbeat(
                keys=[self._key("workers"), self._key("queues")],
                args=[
                    self.namespace,
                    state.worker_id,
                    self.heartbeat_timeout,
                    int(reap),
                    self.dead_message_ttl,
                    int(release),
                ],
            )
        if reaped:
            logger.warning(
                "Redelivering %d message(s) of %d worker(s) whose heartbeat lapsed (over %d ms).",
                moved,
                reaped,
                self.heartbeat_timeout,
            )
        return int(moved), int(reaped)

    # Maintenance and inspection ------------------------------------------------------

    def flush(self, queue_name: str) -> None:
        validate_queue_name(queue_name)
        with translate_errors(f"flushing {queue_name!r}"):
            self.scripts.flush(
                keys=[
                    self._queue_key(queue_name),
                    self._queue_key(queue_name, "msgs"),
                    self._queue_key(queue_name, "delayed"),
                    self._queue_key(queue_name, "notify"),
                    self._key("workers"),
                ],
                args=[self._queue_key(queue_name, "ack:")],
            )

    def flush_all(self) -> None:
        for queue_name in self._all_queues():
            self.flush(queue_name)
        self.purge_dead_letters()

    def stats(self, queue_name: str) -> QueueStats:
        """How many messages ``queue_name`` holds: ready, delayed, in flight, dead."""
        validate_queue_name(queue_name)
        with translate_errors(f"counting {queue_name!r}"):
            ready, delayed, in_flight, dead = self.scripts.stats(
                keys=[
                    self._queue_key(queue_name),
                    self._queue_key(queue_name, "delayed"),
                    self._key("workers"),
                    self._queue_key(queue_name, "dead"),
                ],
                args=[self._queue_key(queue_name, "ack:")],
            )
        return QueueStats(ready=int(ready), delayed=int(delayed), in_flight=int(in_flight), dead=int(dead))

    def workers(self) -> dict[str, int]:
        """The registered worker processes and their last heartbeat (epoch ms)."""
        with translate_errors("listing workers"):
            entries: list[Any] = list(self.client.zrange(self._key("workers"), 0, -1, withscores=True))
        return {_text(worker): int(score) for worker, score in entries}

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until ``queue_name`` has no ready, delayed or unacked message.

        Raises:
          QueueJoinTimeout: ``timeout`` (ms) ran out first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        pause = 0.002
        while True:
            stats = self.stats(queue_name)
            if stats.ready + stats.delayed + stats.in_flight == 0:
                return
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueJoinTimeout(
                        f"Queue {queue_name!r} was not empty after {timeout} ms "
                        f"({stats.ready} ready, {stats.delayed} delayed, {stats.in_flight} in flight)."
                    )
                pause = min(pause, remaining)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def dead_letters(self, queue_name: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Return dead letters, newest first.

        Parameters:
          queue_name: one queue; every queue when ``None``.
          limit: the most to return.
        """
        if limit <= 0:
            return []
        queues = [validate_queue_name(queue_name)] if queue_name is not None else sorted(self._all_queues())
        found: list[DeadLetter] = []
        for name in queues:
            with translate_errors("listing dead letters"):
                flat = self.scripts.list_dead(keys=[self._queue_key(name, "dead")], args=[self.namespace, limit])
            for i in range(0, len(flat), 5):
                message_id, queue, reason, at, data = flat[i : i + 5]
                try:
                    message: Message[Any] | None = Message.decode(data)
                except Exception:
                    message = None
                found.append(
                    DeadLetter(
                        message_id=_text(message_id),
                        queue_name=_text(queue),
                        message=message,
                        reason=_text(reason),
                        died_at=int(at),
                        data=bytes(data),
                    )
                )
        found.sort(key=lambda letter: letter.died_at, reverse=True)
        return found[:limit]

    def _dead(self, mode: str, message_ids: Iterable[str] | None) -> int:
        total = 0
        with translate_errors(f"{mode} of dead letters"):
            if message_ids is None:
                for name in self._all_queues():
                    while True:
                        done, seen = self.scripts.dead(args=[self.namespace, mode, "queue", name, DEAD_CHUNK])
                        total += int(done)
                        if int(seen) < DEAD_CHUNK:
                            break
            else:
                ids = [str(i) for i in message_ids]
                for start in range(0, len(ids), DEAD_CHUNK):
                    done, _ = self.scripts.dead(args=[self.namespace, mode, "ids", *ids[start : start + DEAD_CHUNK]])
                    total += int(done)
        return total

    def requeue_dead_letters(self, message_ids: Iterable[str] | None = None) -> int:
        """Move dead letters back to their queues, payloads unchanged, in their
        original place (ahead of newer messages); all when ``message_ids`` is
        None. Returns how many moved."""
        return self._dead("requeue", message_ids)

    def purge_dead_letters(self, message_ids: Iterable[str] | None = None) -> int:
        """Delete dead letters; all when ``message_ids`` is None. Returns how many."""
        return self._dead("purge", message_ids)

    def close(self) -> None:
        """Stop the heartbeat, settle what consumers buffered, hand back what
        this process still holds, deregister it, and close the client."""
        state = self._state
        if state.pid == os.getpid():
            with state.lock:
                consumers = list(state.consumers)
                heartbeat, state.heartbeat = state.heartbeat, None
            for consumer in consumers:
                consumer.close()
            if heartbeat is not None:
                heartbeat.stop()
            if state.registered:
                try:
                    self._beat(reap=False, release=True)
                except ConnectionClosed as exc:
                    logger.warning("Could not deregister worker %s: %s", state.worker_id, exc)
                state.registered = False
        self.connection.close()
        self._scripts_for = None

    def __repr__(self) -> str:
        connection = self.connection
        if connection.url is not None:
            where = mask_url(connection.url)
        elif connection.cache is not None:
            where = f"cache={connection.cache!r}"
        else:
            where = connection.describe()  # host, port and db: never the password
        return f"<RedisBroker {where} namespace={self.namespace!r}>"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Heartbeat(threading.Thread):
    """Marks this worker process alive, and redelivers the messages of
    workers whose heartbeat lapsed. Reaping starts only after this process
    has been beating successfully for a full ``heartbeat_timeout``."""

    def __init__(self, broker: RedisBroker, state: _ProcessState) -> None:
        super().__init__(name="django-actors-redis-heartbeat", daemon=True)
        self.broker = broker
        self.state = state
        timeout = broker.heartbeat_timeout / 1000
        self.interval = max(min(timeout / 4, 5.0), 0.02)
        self._stopped = threading.Event()

    def run(self) -> None:
        broker = self.broker
        healthy_since: float | None = time.monotonic()
        failing = False
        while not self._stopped.wait(self.interval):
            if self.state.pid != os.getpid():
                return
            try:
                reap = healthy_since is not None and time.monotonic() - healthy_since >= broker.heartbeat_timeout / 1000
                broker._beat(reap=reap)
                if healthy_since is None:
                    healthy_since = time.monotonic()
                if failing:
                    logger.info("Heartbeat of worker %s restored.", self.state.worker_id)
                failing = False
            except Exception as exc:
                healthy_since = None
                if not failing:
                    logger.warning("Heartbeat of worker %s failed: %s", self.state.worker_id, exc)
                failing = True

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join(5)


class RedisConsumer(Consumer):
    """Fetches from one Redis queue for this worker process.

    Acks are buffered and sent in batches: by the first thread to ack while
    no batch is in flight, and with the next fetch.
    """

    def __init__(self, broker: RedisBroker, queue_name: str, *, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(int(prefetch), 1)
        self.timeout = timeout
        #: Guards the buffers below; notified when the held set shrinks.
        self._lock = threading.Condition(threading.Lock())
        self._held: set[str] = set()
        self._acks: list[str] = []
        self._nacks: list[tuple[str, str, str]] = []
        self._flushing = False
        self._resync_due = 0.0
        self._needs_resync = False
        self._closed = False
        self._resync_interval = min(broker.heartbeat_timeout / 1000, 10.0)
        q = broker._queue_key
        worker_id = broker.worker_id
        self._ready = q(queue_name)
        self._msgs = q(queue_name, "msgs")
        self._delayed = q(queue_name, "delayed")
        self._notify = q(queue_name, "notify")
        self._ack_key = q(queue_name, f"ack:{worker_id}")
        self._dead_key = q(queue_name, "dead")
        self._worker_id = worker_id

    # Fetching ---------------------------------------------------------------------

    def fetch(self, count: int) -> list[MessageProxy]:
        """Fetch up to ``count`` messages, waiting up to the consumer's timeout.

        Raises:
          ConnectionClosed: Redis cannot be reached (the worker retries).
        """
        if count <= 0:
            return []
        broker = self.broker
        count = min(count, MAX_FETCH)
        deadline = time.monotonic() + self.timeout / 1000
        while True:
            if self._nacks:
                self._settle()
            if self._needs_resync or time.monotonic() >= self._resync_due:
                self._resync()
            with self._lock:
                acks, self._acks = self._acks, []
                # Never hold more than ``prefetch`` unacked messages.
                room = min(count, self.prefetch - len(self._held.difference(acks)))
                if room <= 0 and not acks:
                    # Full until a batch of acks in flight lands: wait for it.
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    self._lock.wait(min(remaining, 0.1))
                    continue
            try:
                with translate_errors(f"fetching from {self.queue_name!r}"):
                    reply = broker.scripts.fetch(
                        keys=[
                            self._ready,
                            self._msgs,
                            self._delayed,
                            self._ack_key,
                            self._notify,
                            broker._key("workers"),
                            broker._key("seq"),
                            broker._key("queues"),
                        ],
                        args=[self._worker_id, current_millis(), max(room, 0), self.queue_name, *acks],
                    )
            except BaseException:
                with self._lock:
                    self._acks[:0] = acks
                    self._needs_resync = True
                raise
            next_eta, foreign = int(reply[0]), int(reply[1])
            members = [_text(m) for m in reply[2::2]]
            payloads = reply[3::2]
            with self._lock:
                self._held.difference_update(acks)
                self._held.update(members)
            if foreign == 1:
                logger.warning("Adopted values pushed onto the key of queue %r as messages.", self.queue_name)
            elif foreign == 2:
                logger.error("The key of queue %r held a foreign value; it was renamed aside.", self.queue_name)
            if members or room <= 0:
                return [self._proxy(m, p) for m, p in zip(members, payloads, strict=True)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = min(remaining, self.broker.connection.max_block())
            if next_eta >= 0:
                wait = min(wait, max((next_eta - current_millis()) / 1000, 0.001))
            self._wait(wait)

    def _wait(self, seconds: float) -> None:
        """Block on the queue's wake-up list (no polling) for up to ``seconds``."""
        try:
            self.broker.client.blpop([self._notify], timeout=max(round(seconds, 3), 0.001))
        except redis.exceptions.TimeoutError:
            return
        except CONNECTION_ERRORS as exc:
            raise ConnectionClosed(f"Redis connection lost while waiting on {self.queue_name!r}: {exc}") from exc

    def _proxy(self, member: str, data: bytes) -> MessageProxy:
        broker = self.broker
        fields: Any = None
        error: Exception | None = None
        try:
            fields = get_encoder().decode(data)
            message = Message.from_dict(fields, raw=data)
        except Exception as exc:
            error = exc if isinstance(exc, DecodeError) else DecodeError(f"cannot decode message: {exc}", data, exc)
            message_id = fields.get("message_id") if isinstance(fields, dict) else None
            if not isinstance(message_id, str) or not message_id:
                message_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{broker.namespace}:{self.queue_name}:{member}"))
            message = Message(
                queue_name=self.queue_name, actor_name="", args=(), kwargs={}, options={}, message_id=message_id
            )
        proxy = MessageProxy(message, tag=member)
        if error is not None:
            proxy.stuff_exception(error)
            proxy.fail(f"undecodable message: {error}")
        elif len(data) > broker.max_message_size:
            too_large = MessageTooLarge(
                f"Message is {len(data)} bytes encoded, over the limit of {broker.max_message_size} bytes."
            )
            proxy.stuff_exception(too_large)
            proxy.fail(f"message too large: {too_large}")
        return proxy

    def _resync(self) -> None:
        """Hand back whatever Redis says this worker holds but it does not
        (the reply of a fetch that was lost)."""
        with self._lock:
            held = list(self._held)
        with translate_errors(f"resynchronising {self.queue_name!r}"):
            moved = self.broker.scripts.resync(keys=[self._ack_key, self._ready, self._notify], args=held)
        if moved:
            logger.warning("Handed back %d message(s) of %r whose fetch reply was lost.", moved, self.queue_name)
        self._needs_resync = False
        self._resync_due = time.monotonic() + self._resync_interval

    # Settling -----------------------------------------------------------------------

    def ack(self, message: MessageProxy) -> None:
        """Acknowledge a fetched message. One this consumer did not fetch
        (no ``tag``: a plain :class:`Message`) is ignored, with a warning."""
        tag = getattr(message, "tag", None)
        if tag is None:
            logger.warning("Ignoring an ack of message %s: it was not fetched by this consumer.", message.message_id)
            return
        with self._lock:
            self._acks.append(tag)
        self._settle()

    def nack(self, message: MessageProxy) -> None:
        """Dead-letter a fetched message. One this consumer did not fetch
        (no ``tag``: a plain :class:`Message`) is ignored, with a warning."""
        tag = getattr(message, "tag", None)
        if tag is None:
            logger.warning("Ignoring a nack of message %s: it was not fetched by this consumer.", message.message_id)
            return
        reason = message.fail_reason or "failed"
        with self._lock:
            self._nacks.append((tag, message.message_id, reason))
        self._settle()

    def _settle(self) -> None:
        """Send buffered acks and nacks until none is left, unless another
        thread is doing it. A failed batch is kept for the next attempt."""
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
        while True:
            with self._lock:
                acks, nacks = self._acks, self._nacks
                self._acks, self._nacks = [], []
                if not acks and not nacks:
                    self._flushing = False
                    return
            try:
                self._send(acks, nacks)
            except BaseException as exc:
                self._keep(acks, nacks, exc)
                if not isinstance(exc, ConnectionClosed):
                    raise
                return

    def _send(self, acks: list[str], nacks: list[tuple[str, str, str]]) -> None:
        broker = self.broker
        if nacks:
            args: list[Any] = [broker.namespace, self.queue_name, broker.dead_message_ttl]
            for entry in nacks:
                args += entry
            with translate_errors("dead-lettering"):
                broker.scripts.nack(keys=[self._ack_key, self._msgs, self._dead_key], args=args)
            with self._lock:
                self._held.difference_update(tag for tag, _, _ in nacks)
                self._lock.notify_all()
            nacks.clear()
        if acks:
            with translate_errors("acking"):
                broker.scripts.ack(keys=[self._ack_key, self._msgs], args=acks)
            with self._lock:
                self._held.difference_update(acks)
                self._lock.notify_all()
            acks.clear()

    def _keep(self, acks: list[str], nacks: list[tuple[str, str, str]], exc: BaseException) -> None:
        with self._lock:
            self._acks[:0] = acks
            self._nacks[:0] = nacks
            self._flushing = False
            pending = len(self._acks) + len(self._nacks)
        logger.warning("Could not settle %d message(s) of %r yet (%s); will retry.", pending, self.queue_name, exc)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        members = [proxy.tag for proxy in messages]
        if not members:
            return
        try:
            with translate_errors(f"handing back messages of {self.queue_name!r}"):
                self.broker.scripts.requeue(keys=[self._ack_key, self._ready, self._notify], args=members)
        except ConnectionClosed:
            # Forgotten here, they are handed back by the next resync, once
            # Redis answers again: a live worker must not keep them forever.
            with self._lock:
                self._held.difference_update(members)
                self._needs_resync = True
            raise
        with self._lock:
            self._held.difference_update(members)
            self._lock.notify_all()

    @property
    def pending_settlements(self) -> int:
        """Acks and nacks buffered but not yet in Redis."""
        with self._lock:
            return len(self._acks) + len(self._nacks)

    def close(self) -> None:
        """Send what is still buffered (best effort) and forget the consumer."""
        if self._closed:
            return
        self._closed = True
        try:
            self._settle()
        except Exception as exc:
            logger.warning("Closing the consumer of %r: %s", self.queue_name, exc)
        state = self.broker.state
        with state.lock:
            state.consumers.discard(self)

    def __repr__(self) -> str:
        return f"<RedisConsumer {self.queue_name!r} worker={self._worker_id}>"

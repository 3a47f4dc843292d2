"""Redis clients for the Redis broker and results backend.

Both take the same three ways to reach Redis, exactly one of them:

- ``url="redis://host:6379/0"`` (plus any redis-py option as keyword
  arguments): a client of their own, rebuilt in each forked process;
- ``client=redis.Redis(...)``: a client you built;
- ``cache="default"``: the connection of a ``CACHES`` alias, either a
  django-redis cache or Django's own ``RedisCache``.

With none of them, ``redis://127.0.0.1:6379/0`` (or the keyword options, as
``host=``/``port=``/``db=``) is used, as dramatiq does.

Lua scripts, which carry every hot operation (enqueue, fetch, ack, storing
a result), run through a *lane* (:class:`Lane`): connections of the same
client kept in a plain list, one command at a time. That skips redis-py's
per-command pool bookkeeping (a lock, a readability poll of the socket and
metrics on every checkout), which costs more than the round trip itself on
loopback. Everything else goes through the client.

A lane can also *spin* for a reply (:data:`SPIN_WAIT`): after writing a
short command it polls the socket without sleeping for a few dozen
microseconds before it blocks. A local Redis answers a script in 20-40 us,
while putting the thread to sleep and waking it again costs 50-60 us more on
a virtual machine, so a ``send()`` takes half as long for the same CPU. The
brokers use it for enqueueing only, and a connection whose replies keep
arriving after the spin (a remote or saturated Redis) backs off from it.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConnectionClosed

#: How long a lane spins for the reply to an enqueue before it sleeps on the
#: socket, in microseconds (the brokers' default; ``spin_wait=0`` turns it off).
SPIN_WAIT = 200

#: After this many spins in a row that ended without a reply, a connection
#: stops spinning for as many calls again (doubling up to the ceiling), then
#: tries once more: the CPU spent on a Redis that is far away stays small.
_SPIN_BACKOFF_CEILING = 1024

#: The URL used when neither url, client, cache nor connection options are given.
DEFAULT_URL = "redis://127.0.0.1:6379/0"

#: redis-py errors that mean "the connection is gone or Redis is not serving".
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (Redis loading its AOF)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica during a failover
)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn redis-py connection errors into :class:`ConnectionClosed`.

    Parameters:
      what: what was being done, for the error text ("fetching from 'default'").
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise ConnectionClosed(f"Redis connection lost while {what}: {type(exc).__name__}: {exc}") from exc


class RedisConnection:
    """Hands out a redis-py client for the current process.

    A client built here from a URL is rebuilt after a fork, so a forked
    worker never shares sockets with its parent. A client passed in (or
    taken from a cache) is kept: redis-py's pool already resets itself in a
    forked child, and a cache alias is looked up again in the child.

    Parameters:
      url: a ``redis://`` / ``rediss://`` / ``unix://`` URL.
      client: a ``redis.Redis`` built by the caller.
      cache: a ``CACHES`` alias backed by Redis.
      options: redis-py connection options for a client built here.

    Raises:
      ValueError: more than one of url, client and cache; options given with
        client or cache; a client that decodes responses.
      TypeError: ``client`` is not a ``redis.Redis``.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        cache: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        given = [name for name, value in (("url", url), ("client", client), ("cache", cache)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass only one of url=, client= or cache= (got {' and '.join(given)}).")
        options = dict(options or {})
        if options and (client is not None or cache is not None):
            raise ValueError(
                f"Connection options ({', '.join(sorted(options))}) only apply to a client built from url=; "
                "configure the client or the cache itself instead."
            )
        if client is not None and not isinstance(client, redis.Redis):
            raise TypeError(f"client must be a redis.Redis, not {type(client).__name__}.")
        if url is not None and not isinstance(url, str):
            raise TypeError(f"url must be a string, not {type(url).__name__}.")
        if cache is not None and not isinstance(cache, str):
            raise TypeError(f"cache must be the name of a CACHES alias, not {type(cache).__name__}.")
        if options.get("decode_responses"):
            raise ValueError("decode_responses=True is not supported: messages are bytes.")
        self.url = url
        self.cache = cache
        self.options = options
        self._given_client = client
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._client: redis.Redis | None = None
        self._pid = 0
        self._lane: tuple[redis.Redis, Lane | None] | None = None
        #: Whether the client was built here (and may be closed here).
        self.owns_client = client is None and cache is None
        if client is not None:
            self._check(client, "client")

    @staticmethod
    def _check(client: redis.Redis, where: str) -> None:
        kwargs = client.get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ValueError(
                f"The Redis {where} decodes responses (decode_responses=True); django_actors needs "
                "bytes. Use a client without decode_responses."
            )

    def _build(self) -> redis.Redis:
        if self._given_client is not None:
            return self._given_client
        if self.cache is not None:
            client = client_for_cache(self.cache)
            self._check(client, f"cache {self.cache!r}")
            return client
        options = dict(self.options)
        # No hidden retries: a retried script could run twice without the
        # caller knowing. The callers retry with backoff themselves.
        options.setdefault("retry", Retry(NoBackoff(), 0))
        if self.url is None and not {"host", "port", "unix_socket_path"} & set(options):
            return redis.Redis.from_url(DEFAULT_URL, **options)
        if self.url is None:
            return redis.Redis(**options)
        return redis.Redis.from_url(self.url, **options)

    @property
    def client(self) -> redis.Redis:
        """The client for this process."""
        pid = os.getpid()
        client = self._client
        if client is not None and self._pid == pid:
            return client
        if self._lock_pid != pid:  # a forked child: the parent's lock may have been held at the fork
            self._lock, self._lock_pid = threading.Lock(), pid
        with self._lock:
            if self._client is None or self._pid != pid:
                self._client = self._build()
                self._pid = pid
            return self._client

    def lane(self) -> Lane | None:
        """The lane of this process's client, or ``None`` when its pool is
        not a plain redis-py pool (client-side caching, say)."""
        client = self.client
        bound = self._lane
        if bound is not None and bound[0] is client:
            return bound[1]
        with self._lock:
            bound = self._lane
            if bound is None or bound[0] is not client:
                bound = (client, Lane.for_client(client))
                self._lane = bound
            return bound[1]

    def register_script(self, source: str, *, spin: int = 0) -> LaneScript:
        """Bind a Lua script to this process's client; it runs through the
        lane, spinning ``spin`` microseconds for each reply (:data:`SPIN_WAIT`)."""
        client = self.client
        return LaneScript(client.register_script(source), self.lane(), spin=spin)

    @property
    def socket_timeout(self) -> float | None:
        """The client's read timeout in seconds (``None``: no timeout)."""
        value = self.client.get_connection_kwargs().get("socket_timeout")
        return float(value) if value else None

    def max_block(self, ceiling: float = 5.0) -> float:
        """The longest a blocking command (BLPOP) may wait, in seconds, so that
        it returns before the socket's read timeout fires."""
        timeout = self.socket_timeout
        if timeout is None:
            return ceiling
        return max(min(ceiling, timeout - 0.5, timeout * 0.8), 0.01)

    def describe(self) -> str:
        """Where the client connects, for messages (no password)."""
        if self.cache is not None:
            return f"cache {self.cache!r}"
        kwargs = self.client.get_connection_kwargs()
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}"
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def close(self) -> None:
        """Close the client's connections if it was built here (in this process)."""
        with self._lock:
            client, self._client = self._client, None
            mine = self._pid == os.getpid()
            bound, self._lane = self._lane, None
        if bound is not None and bound[1] is not None:
            bound[1].close()
        if client is not None and self.owns_client and mine:
            client.close()
            client.connection_pool.disconnect()


class Lane:
    """Connections of one client, each used for one command at a time.

    A connection is taken from a list, used for one command and its reply,
    and put back, with no lock: ``list.pop`` and ``list.append`` are atomic.
    A connection is put back only when its reply was read in full; after
    any other outcome (a lost connection, an exception that interrupted the
    command) it is closed, so no reply can ever be read by the wrong caller.
    The connections are made with the client pool's own class and options
    (so Sentinel, TLS and authentication work as for the client); there are
    as many as commands ever ran at once. After a fork the child starts with
    none of the parent's.

    Parameters:
      pool: the client's connection pool.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._idle: list[_LaneConnection] = []
        self._pid = os.getpid()
        self._closed = False
        self._kwargs = dict(pool.connection_kwargs)
        if _RAW:  # redis-py's own read buffer only serves the handshake then
            self._kwargs["socket_read_size"] = 4096

    def _connection(self) -> _LaneConnection:
        return _LaneConnection(self.pool.connection_class(**self._kwargs))

    @classmethod
    def for_client(cls, client: redis.Redis) -> Lane | None:
        """A lane for ``client``, or ``None`` when its pool is not a plain one."""
        pool = getattr(client, "connection_pool", None)
        if not isinstance(pool, redis.ConnectionPool) or getattr(pool, "cache", None) is not None:
            return None
        return cls(pool)

    def execute(self, *args: Any, spin: float = 0.0) -> Any:
        """Send one command and return its reply, unparsed.

        Parameters:
          spin: how long to poll for the reply before sleeping, in seconds
            (see :data:`SPIN_WAIT`); 0 to sleep at once.

        Raises:
          redis.exceptions.ResponseError: Redis answered with an error.
          redis.exceptions.ConnectionError, TimeoutError: as redis-py does.
        """
        lane_connection = self._take()
        clean = False
        try:
            try:
                reply = lane_connection.call(args, spin)
            except redis.exceptions.ResponseError:
                clean = True  # the error reply was read in full
                raise
            clean = True
            return reply
        finally:
            self._give_back(lane_connection, clean)

    def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send several commands at once (a pipeline: Redis runs the first
        while the others are still being sent) and return their replies, in
        order; an error reply is returned as its exception, not raised.

        Raises:
          redis.exceptions.ConnectionError, TimeoutError: as :meth:`execute`.
        """
        lane_connection = self._take()
        clean = False
        try:
            replies: list[Any] = lane_connection.call_many(commands)
            clean = True
            return replies
        finally:
            self._give_back(lane_connection, clean)

    def _take(self) -> _LaneConnection:
        """An idle connection, checked, or a new one."""
        if self._pid != os.getpid():  # a forked child: never touch the parent's sockets
            self._idle, self._pid = [], os.getpid()
        try:
            lane_connection = self._idle.pop()
        except IndexError:
            return self._connection()
        if lane_connection.stale():
            # Closed by the server while idle (a Redis restart, an idle
            # timeout): reconnect before sending, as redis-py's pool does.
            lane_connection.connection.disconnect()
        return lane_connection

    def _give_back(self, lane_connection: _LaneConnection, clean: bool) -> None:
        """Keep a connection whose reply was read in full; close any other."""
        if clean and not self._closed:
            self._idle.append(lane_connection)
        else:
            lane_connection.connection.disconnect()

    def close(self) -> None:
        """Close the idle connections; busy ones are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for lane_connection in idle:
                lane_connection.connection.disconnect()

    def __del__(self) -> None:
        # A lane dropped without close() (its broker or backend was never
        # closed) still closes its sockets; redis-py's pool does the same.
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


class _LaneConnection:
    """A redis-py connection of a lane. With hiredis installed, once redis-py
    has connected it (handshake, authentication, TLS), its commands are
    written and their replies parsed here directly (RESP2 or RESP3): half
    the CPU of redis-py's per-command path."""

    __slots__ = ("buffer", "connection", "polled", "poller", "reader", "sock", "spin_misses", "spin_skip")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        raw = _RAW and hasattr(connection, "_sock")
        self.buffer = bytearray(16384) if raw else None  # replies may be larger: read in turns
        self.reader: Any = None
        self.sock: Any = None
        self.poller: Any = None
        self.polled: Any = None
        self.spin_misses = 0  # spins in a row that ended without the reply
        self.spin_skip = 0  # calls left before spinning is tried again

    def stale(self) -> bool:
        """Whether this idle connection was closed by the server or holds
        stray data: its socket is readable while no reply is pending (one
        ``poll``, with a poll object kept per socket)."""
        sock = getattr(self.connection, "_sock", None)
        if sock is None:
            return False  # not connected: it connects when used
        if not hasattr(select, "poll"):  # Windows: redis-py's own check
            return _unusable(self.connection)
        return bool(self._poller(sock).poll(0))

    def _poller(self, sock: Any) -> Any:
        """The poll object watching ``sock`` (one per socket, kept)."""
        if self.polled is not sock:
            self.poller = select.poll()
            self.poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            self.polled = sock
        return self.poller

    def _spin(self, sock: Any, seconds: float) -> None:
        """Poll ``sock`` until it is readable or ``seconds`` have passed,
        without sleeping; back off after misses (see :data:`SPIN_WAIT`)."""
        if self.spin_skip:
            self.spin_skip -= 1
            return
        poll = self._poller(sock).poll
        clock = time.perf_counter
        deadline = clock() + seconds
        while not poll(0):
            if clock() >= deadline:
                self.spin_misses += 1
                if self.spin_misses >= 2:
                    self.spin_skip = min(1 << (self.spin_misses - 2), _SPIN_BACKOFF_CEILING)
                return
        self.spin_misses = 0

    def _socket(self) -> Any:
        connection = self.connection
        sock = connection._sock
        if sock is None:
            connection.connect()
            sock = connection._sock
        if sock is not self.sock:  # a new socket: a new reader
            self.sock = sock
            self.reader = hiredis.Reader(
                protocolError=redis.exceptions.InvalidResponse, replyError=_reply_error, notEnoughData=_PENDING
            )
        return sock

    def call_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send every command, then read every reply (error replies returned)."""
        connection = self.connection
        buffer = self.buffer
        replies: list[Any] = []
        if buffer is None:
            for args in commands:
                connection.send_packed_command(connection.pack_command(*args), check_health=False)
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.exceptions.ResponseError as exc:
                    replies.append(exc)
            return replies
        sock = self._socket()
        reader = self.reader
        try:
            for args in commands:
                sock.sendall(hiredis.pack_command(args))
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is not _PENDING:
                    replies.append(reply)
                    continue
                received = sock.recv_into(buffer)
                if not received:
                    raise redis.exceptions.ConnectionError("Connection closed by server.")
                reader.feed(buffer, 0, received)
        except TimeoutError as exc:  # socket.timeout
            raise redis.exceptions.TimeoutError(f"Timeout talking to Redis: {exc}") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error talking to Redis: {exc}") from exc
        return replies

    def call(self, args: tuple[Any, ...], spin: float = 0.0) -> Any:
        connection = self.connection
        buffer = self.buffer
        if buffer is None:
            connection.send_packed_command(connection.pack_command(*args), check_health=False)
            return connection.read_response()
        sock = self._socket()
        reader = self.reader
        try:
            sock.sendall(hiredis.pack_command(args))
            if spin:
                self._spin(sock, spin)
            while True:
                received = sock.recv_into(buffer)
                if not received:
                    raise redis.exceptions.ConnectionError("Connection closed by server.")
                reader.feed(buffer, 0, received)
                reply = reader.gets()
                if reply is not _PENDING:
                    break
        except TimeoutError as exc:  # socket.timeout
            raise redis.exceptions.TimeoutError(f"Timeout talking to Redis: {exc}") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error talking to Redis: {exc}") from exc
        if isinstance(reply, Exception):  # an error reply: ResponseError, or LOADING (a ConnectionError)
            raise reply
        return reply


#: What the hiredis reader returns while a reply is incomplete.
_PENDING: Any = object()

try:
    import hiredis

    hiredis.Reader(notEnoughData=_PENDING)
    _RAW = True
except (ImportError, TypeError):  # no hiredis, or too old: the redis-py path is used
    _RAW = False

#: A redis-py parser, for its mapping of error replies to exception classes.
_PARSER_CLASS: Any = redis.connection.DefaultParser
_ERROR_PARSER: Any = _PARSER_CLASS(socket_read_size=1)


def _reply_error(message: str) -> Exception:
    """The redis-py exception for an error reply (NOSCRIPT, READONLY, LOADING...)."""
    error: Exception = _ERROR_PARSER.parse_error(message)
    return error


def _unusable(connection: Any) -> bool:
    """redis-py's own check that an idle connection has nothing to read
    (where ``select.poll`` is missing)."""
    try:
        return bool(connection.can_read())
    except Exception:
        return True


class LaneScript:
    """A Lua script run with ``EVALSHA`` through a :class:`Lane` (through the
    client when there is none), loaded again if Redis lost it.

    Called as redis-py's ``Script``: ``script(keys=[...], args=[...])``.

    Parameters:
      spin: how long a call spins for its reply before sleeping, in
        microseconds (see :data:`SPIN_WAIT`); 0 not to spin.
    """

    def __init__(self, script: Any, lane: Lane | None, *, spin: int = 0) -> None:
        self.script = script
        self.lane = lane
        self.spin = spin / 1_000_000

    def __call__(self, keys: Any = (), args: Any = ()) -> Any:
        lane = self.lane
        if lane is None:
            return self.script(keys=keys, args=args)
        script = self.script
        try:
            return lane.execute("EVALSHA", script.sha, len(keys), *keys, *args, spin=self.spin)
        except redis.exceptions.NoScriptError:
            # Not run (a restarted Redis, SCRIPT FLUSH): load it and run it once more.
            script.sha = lane.execute("SCRIPT", "LOAD", script.script)
            if isinstance(script.sha, bytes):
                script.sha = script.sha.decode()
            return lane.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def call_many(self, calls: list[tuple[Any, Any]], *, return_errors: bool = False) -> list[Any]:
        """Run the script once per ``(keys, args)``, pipelined: one write of
        every call, then their replies, in order.

        Parameters:
          return_errors: return a failed call's error in its place instead
            of raising it.

        Raises:
          redis.exceptions.ResponseError: a call failed (the others ran).
        """
        lane = self.lane
        if lane is None:
            results: list[Any] = []
            for keys, args in calls:
                try:
                    results.append(self(keys=keys, args=args))
                except redis.exceptions.ResponseError as exc:
                    if not return_errors:
                        raise
                    results.append(exc)
            return results
        script = self.script

        def commands(indexes: list[int]) -> list[tuple[Any, ...]]:
            return [("EVALSHA", script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in indexes]

        replies = lane.execute_many(commands(list(range(len(calls)))))
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if missing:  # those did not run: load the script and run them once more
            script.sha = lane.execute("SCRIPT", "LOAD", script.script)
            if isinstance(script.sha, bytes):
                script.sha = script.sha.decode()
            for i, reply in zip(missing, lane.execute_many(commands(missing)), strict=True):
                replies[i] = reply
        for reply in replies:
            if not isinstance(reply, Exception):
                continue
            if not (return_errors and isinstance(reply, redis.exceptions.ResponseError)):
                raise reply  # LOADING while Redis restarts is always raised
        return replies


def client_for_cache(alias: str) -> redis.Redis:
    """The redis-py client behind a ``CACHES`` alias.

    Raises:
      django.core.exceptions.ImproperlyConfigured: no such alias, or it is not
        a Redis cache.
    """
    from django.conf import settings
    from django.core.cache import caches
    from django.core.exceptions import ImproperlyConfigured

    if alias not in getattr(settings, "CACHES", {}):
        raise ImproperlyConfigured(f"cache={alias!r}: there is no CACHES[{alias!r}] in the Django settings.")
    backend = caches[alias]
    module = type(backend).__module__
    if module.startswith("django_redis"):
        from django_redis import get_redis_connection  # type: ignore[import-untyped]

        try:
            client = get_redis_connection(alias)
        except NotImplementedError as exc:
            raise ImproperlyConfigured(
                f"cache={alias!r}: the django-redis client of this cache does not expose a raw connection ({exc})."
            ) from exc
    else:
        from django.core.cache.backends.redis import RedisCache

        if not isinstance(backend, RedisCache):
            raise ImproperlyConfigured(
                f"cache={alias!r} is a {type(backend).__module__}.{type(backend).__name__}, not a Redis cache: "
                "use django_redis.cache.RedisCache or django.core.cache.backends.redis.RedisCache."
            )
        client = backend._cache.get_client(write=True)
    if not isinstance(client, redis.Redis):
        raise ImproperlyConfigured(
            f"cache={alias!r} gives a {type(client).__name__}, not a redis.Redis client (Redis Cluster "
            "is not supported here)."
        )
    return client

"""Tests for django_actors.rate_limits: the limiters and Barrier on the stub
and Redis backends, plus the Redis backend's own behaviour."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import django_actors
from django_actors.errors import ConnectionClosed
from django_actors.rate_limits import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    RateLimiter,
    RateLimiterBackend,
    RateLimitExceeded,
    WindowRateLimiter,
)
from django_actors.rate_limits.backends import RedisBackend, StubBackend

#: Slack for Redis's millisecond clock against time.monotonic()/time.time().
CLOCK_SLACK = 0.005

BackendFactory = Callable[[], RateLimiterBackend]


def wait_for(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.002) -> float:
    """Poll ``condition`` until it is true; return the time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def try_acquire(limiter: RateLimiter) -> bool:
    with limiter.acquire(raise_on_failure=False) as acquired:
        return acquired


@pytest.fixture(params=["stub", pytest.param("redis", marks=pytest.mark.redis)])
def make_backend(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """A factory of backends sharing one state: the stub instance itself, or
    new Redis clients on the same (flushed) server, like separate processes."""
    created: list[RateLimiterBackend] = []
    if request.param == "stub":
        stub = StubBackend()

        def factory() -> RateLimiterBackend:
            return stub

    else:
        url = request.getfixturevalue("redis_url")

        def factory() -> RateLimiterBackend:
            backend = RedisBackend(url=url)
            created.append(backend)
            return backend

    yield factory
    for backend in created:
        backend.close()


@pytest.fixture
def backend(make_backend: BackendFactory) -> RateLimiterBackend:
    return make_backend()


def unique_key() -> str:
    return f"test-{uuid.uuid4().hex}"


# ConcurrentRateLimiter ---------------------------------------------------------------


def test_concurrent_limiter_admits_up_to_limit_and_releases(backend: RateLimiterBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, unique_key(), limit=2)
    with limiter.acquire() as first, limiter.acquire() as second:
        assert first is True and second is True
        with pytest.raises(RateLimitExceeded, match="rate limit exceeded"), limiter.acquire():
            pytest.fail("a third holder got in")
        with limiter.acquire(raise_on_failure=False) as third:
            assert third is False
    # Both slots are given back, also when the block raises.
    with pytest.raises(KeyError), limiter.acquire():
        raise KeyError("boom")
    with limiter.acquire(), limiter.acquire():
        assert not try_acquire(limiter)


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrent_limiter_under_contention(make_backend: BackendFactory, limit: int) -> None:
    key = unique_key()
    threads_count, entries_each = 8, 4
    lock = threading.Condition()
    inside = max_inside = entries = full_rounds = 0
    active = threads_count
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal inside, max_inside, entries, full_rounds, active
        limiter = ConcurrentRateLimiter(make_backend(), key, limit=limit)
        done = 0
        try:
            while done < entries_each:
                with limiter.acquire(raise_on_failure=False) as acquired:
                    if not acquired:
                        time.sleep(0.001)  # back off before retrying
                        continue
                    with lock:
                        round_at_entry = full_rounds
                        inside += 1
                        entries += 1
                        max_inside = max(max_inside, inside)
                        if inside == limit:
                            full_rounds += 1
                            lock.notify_all()
                        # Stay until every slot is taken (bounded), so the test
                        # sees the limiter full, and nothing beyond it.
                        deadline = time.monotonic() + 0.3
                        while full_rounds == round_at_entry and active >= limit:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                break
                            lock.wait(remaining)
                        inside -= 1
                    done += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            with lock:
                active -= 1
                lock.notify_all()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert entries == threads_count * entries_each
    assert max_inside == limit


def test_concurrent_limiter_lease_of_crashed_holder_expires(backend: RateLimiterBackend) -> None:
    ttl = 300
    limiter = ConcurrentRateLimiter(backend, unique_key(), limit=1, ttl=ttl)
    started = time.monotonic()
    crashed = limiter.acquire()
    assert crashed.__enter__() is True  # and never exits, like a killed process
    assert not try_acquire(limiter)
    freed_at = wait_for(lambda: try_acquire(limiter), timeout=3)
    assert freed_at >= started + ttl / 1000 - CLOCK_SLACK
    assert freed_at < started + ttl / 1000 + 2


def test_concurrent_limiter_late_release_does_not_free_anothers_slot(backend: RateLimiterBackend) -> None:
    limiter = ConcurrentRateLimiter(backend, unique_key(), limit=1, ttl=200)
    slow = limiter.acquire()
    assert slow.__enter__() is True
    # The slow holder outlives its lease and someone else takes the slot.
    successors = []

    def take_over() -> bool:
        successors.append(limiter.acquire(raise_on_failure=False))
        return bool(successors[-1].__enter__())

    wait_for(take_over, timeout=3)
    successor = successors[-1]
    slow.__exit__(None, None, None)
    assert not try_acquire(limiter), "the expired holder's release freed its successor's slot"
    successor.__exit__(None, None, None)
    assert try_acquire(limiter)


def test_limiters_with_different_keys_are_independent(backend: RateLimiterBackend) -> None:
    first = ConcurrentRateLimiter(backend, unique_key())
    second = ConcurrentRateLimiter(backend, unique_key())
    with first.acquire():
        assert try_acquire(second)
        assert not try_acquire(first)


def test_one_key_can_serve_several_kinds_of_limiter(backend: RateLimiterBackend) -> None:
    key = unique_key()
    with ConcurrentRateLimiter(backend, key).acquire():
        assert try_acquire(WindowRateLimiter(backend, key, limit=1, window=10))
        assert try_acquire(BucketRateLimiter(backend, key, limit=1, bucket=60_000))
        barrier = Barrier(backend, key)
        assert barrier.create(1)
        assert barrier.wait(timeout=0)


# WindowRateLimiter --------------------------------------------------------------------


def test_window_limiter_slides(backend: RateLimiterBackend) -> None:
    window = 0.4
    limiter = WindowRateLimiter(backend, unique_key(), limit=2, window=window)

    a_start = time.monotonic()
    assert try_acquire(limiter)
    # Let time pass so the two acquisitions leave the window at different times.
    time.sleep(0.15)
    b_start = time.monotonic()
    assert try_acquire(limiter)

    refused = try_acquire(limiter)
    if time.monotonic() < a_start + window:
        assert not refused, "a third acquisition within the window was allowed"

    # Only the first acquisition's expiry lets one more in...
    freed_at = wait_for(lambda: try_acquire(limiter), timeout=3)
    assert freed_at >= a_start + window - CLOCK_SLACK
    refused = try_acquire(limiter)
    if time.monotonic() < b_start + window:
        assert not refused, "the window let in two acquisitions when one slot expired (fixed, not sliding)"
    # ...and the second's expiry the next one.
    freed_at = wait_for(lambda: try_acquire(limiter), timeout=3)
    assert freed_at >= b_start + window - CLOCK_SLACK


def test_window_limiter_does_not_give_back_on_exit(backend: RateLimiterBackend) -> None:
    limiter = WindowRateLimiter(backend, unique_key(), limit=3, window=30)
    for _ in range(3):
        with limiter.acquire():
            pass
    with pytest.raises(RateLimitExceeded), limiter.acquire():
        pass


def test_window_limiter_under_contention(make_backend: BackendFactory) -> None:
    key = unique_key()
    granted = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal granted
        limiter = WindowRateLimiter(make_backend(), key, limit=5, window=30)
        for _ in range(10):
            if try_acquire(limiter):
                with lock:
                    granted += 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert granted == 5


# BucketRateLimiter ------------------------------------------------------------------


def now_ms() -> float:
    return time.time() * 1000


def test_bucket_limiter_resets_at_the_next_bucket(backend: RateLimiterBackend) -> None:
    bucket, limit = 250, 3
    limiter = BucketRateLimiter(backend, unique_key(), limit=limit, bucket=bucket)
    for _attempt in range(5):
        # Start early in a bucket, so the first burst fits in it.
        wait_for(lambda: now_ms() % bucket < bucket / 3, timeout=2, interval=0.001)
        index = now_ms() // bucket
        results = [try_acquire(limiter) for _ in range(limit + 1)]
        if now_ms() // bucket == index:
            break
    else:  # pragma: no cover - the machine is too slow for 250 ms buckets
        pytest.fail("could not run the burst inside one bucket")
    assert results == [True] * limit + [False]

    wait_for(lambda: try_acquire(limiter), timeout=3, interval=0.001)
    # It took the next bucket to let one more in.
    assert now_ms() >= (index + 1) * bucket - CLOCK_SLACK * 1000
    new_index = now_ms() // bucket
    more = [try_acquire(limiter) for _ in range(limit)]
    if now_ms() // bucket == new_index:
        assert more == [True] * (limit - 1) + [False]


def test_bucket_limiter_under_contention(make_backend: BackendFactory) -> None:
    key = unique_key()
    granted = 0
    lock = threading.Lock()
    bucket = 3_600_000  # one bucket for the whole test, unless it straddles the hour
    start_index = now_ms() // bucket

    def work() -> None:
        nonlocal granted
        limiter = BucketRateLimiter(make_backend(), key, limit=7, bucket=bucket)
        for _ in range(10):
            if try_acquire(limiter):
                with lock:
                    granted += 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if now_ms() // bucket == start_index:
        assert granted == 7


# Barrier ----------------------------------------------------------------------------


def test_barrier_create_only_once(backend: RateLimiterBackend) -> None:
    key = unique_key()
    assert Barrier(backend, key).create(3) is True
    assert Barrier(backend, key).create(3) is False
    assert Barrier(backend, key).create(5) is False


def test_barrier_releases_every_party_when_the_last_arrives(make_backend: BackendFactory) -> None:
    key = unique_key()
    backend = make_backend()
    barrier = Barrier(backend, key)
    assert barrier.create(3)
    results: list[bool] = []
    released_at: list[float] = []

    def party() -> None:
        outcome = Barrier(make_backend(), key).wait(timeout=10_000)
        released_at.append(time.monotonic())
        results.append(outcome)

    threads = [threading.Thread(target=party) for _ in range(2)]
    for thread in threads:
        thread.start()
    # Both parties have arrived and are blocked.
    wait_for(lambda: backend.count_members(f"{key}@arrived") == 2)
    threads[0].join(timeout=0.1)
    assert all(thread.is_alive() for thread in threads)
    assert results == []

    last_arrived = time.monotonic()
    assert barrier.wait(timeout=10_000) is True
    for thread in threads:
        thread.join(timeout=5)
    assert results == [True, True]
    assert max(released_at) - last_arrived < 1.0


def test_barrier_wait_times_out(backend: RateLimiterBackend) -> None:
    barrier = Barrier(backend, unique_key())
    barrier.create(2)
    started = time.monotonic()
    assert barrier.wait(timeout=200) is False
    elapsed = time.monotonic() - started
    assert 0.2 - CLOCK_SLACK <= elapsed < 2
    # The party that timed out still counts: the next arrival is the last.
    assert barrier.wait(timeout=0) is True


def test_barrier_without_blocking(backend: RateLimiterBackend) -> None:
    barrier = Barrier(backend, unique_key())
    barrier.create(2)
    assert barrier.wait(block=False) is False
    assert barrier.wait(block=False) is True
    # Parties arriving after the release pass straight through.
    assert barrier.wait(timeout=0) is True


def test_barrier_of_one_party(backend: RateLimiterBackend) -> None:
    barrier = Barrier(backend, unique_key())
    assert barrier.create(1)
    assert barrier.wait() is True


def test_barrier_must_be_created(backend: RateLimiterBackend) -> None:
    with pytest.raises(RuntimeError, match="create"):
        Barrier(backend, unique_key()).wait(timeout=10)


def test_barrier_expires_after_ttl(backend: RateLimiterBackend) -> None:
    key = unique_key()
    barrier = Barrier(backend, key, ttl=150)
    assert barrier.create(2)
    wait_for(lambda: backend.get(key) is None, timeout=3)
    with pytest.raises(RuntimeError, match="does not exist"):
        barrier.wait(timeout=10)
    assert barrier.create(2) is True


def test_barrier_arrival_after_a_lost_release_releases_the_waiters(make_backend: BackendFactory) -> None:
    key = unique_key()
    backend = make_backend()
    barrier = Barrier(backend, key)
    barrier.create(2)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(Barrier(make_backend(), key).wait(timeout=10_000)))
    waiter.start()
    wait_for(lambda: backend.count_members(f"{key}@arrived") == 1)
    # The last party arrived but its release notification never happened
    # (its connection dropped); it calls wait() again.
    backend.add_member(f"{key}@arrived", "party-whose-notify-was-lost", 60_000)
    assert barrier.wait(timeout=0) is True
    waiter.join(timeout=5)
    assert results == [True]


def test_barrier_arrivals_are_idempotent(backend: RateLimiterBackend) -> None:
    # A party's arrival retried after a dropped connection must not count twice,
    # or the barrier would release before every party arrived.
    key = unique_key()
    assert backend.add_member(key, "party-1", 60_000) == 1
    assert backend.add_member(key, "party-1", 60_000) == 1
    assert backend.add_member(key, "party-2", 60_000) == 2
    assert backend.count_members(key) == 2
    assert backend.count_members(unique_key()) == 0


# Bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda b: ConcurrentRateLimiter(b, "k", limit=0), "limit"),
        (lambda b: ConcurrentRateLimiter(b, "k", limit=-1), "limit"),
        (lambda b: ConcurrentRateLimiter(b, "k", limit=1.5), "limit"),  # type: ignore[arg-type]
        (lambda b: ConcurrentRateLimiter(b, "k", limit=True), "limit"),
        (lambda b: ConcurrentRateLimiter(b, "k", ttl=0), "ttl"),
        (lambda b: ConcurrentRateLimiter(b, ""), "key"),
        (lambda b: WindowRateLimiter(b, "k", limit=0), "limit"),
        (lambda b: WindowRateLimiter(b, "k", window=0), "window"),
        (lambda b: WindowRateLimiter(b, "k", window=-1), "window"),
        (lambda b: WindowRateLimiter(b, "k", window=float("nan")), "window"),
        (lambda b: WindowRateLimiter(b, "k", window="1"), "window"),  # type: ignore[arg-type]
        (lambda b: WindowRateLimiter(b, ""), "key"),
        (lambda b: BucketRateLimiter(b, "k", limit=0), "limit"),
        (lambda b: BucketRateLimiter(b, "k", bucket=0), "bucket"),
        (lambda b: BucketRateLimiter(b, "k", bucket=-5), "bucket"),
        (lambda b: BucketRateLimiter(b, None), "key"),  # type: ignore[arg-type]
        (lambda b: Barrier(b, "k", ttl=0), "ttl"),
        (lambda b: Barrier(b, ""), "key"),
        (lambda b: Barrier(b, "k").create(0), "parties"),
        (lambda b: Barrier(b, "k").wait(timeout=-1), "timeout"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build: Callable[[StubBackend], object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build(StubBackend())


def test_backend_must_be_a_rate_limiter_backend() -> None:
    with pytest.raises(TypeError, match="RateLimiterBackend"):
        ConcurrentRateLimiter(object(), "k")  # type: ignore[arg-type]


def test_public_imports() -> None:
    assert RateLimitExceeded is django_actors.RateLimitExceeded
    from django_actors.rate_limits import backends

    assert backends.RedisBackend is RedisBackend
    with pytest.raises(AttributeError):
        backends.NoSuchBackend  # noqa: B018


# With a worker ------------------------------------------------------------------------


def test_mutex_serialises_an_actor_across_worker_threads(stub_broker, stub_worker) -> None:
    mutex = ConcurrentRateLimiter(StubBackend(), unique_key(), limit=1)
    lock = threading.Lock()
    state = {"inside": 0, "max": 0, "done": 0}

    @django_actors.actor(max_retries=100, min_backoff=5, max_backoff=20)
    def guarded() -> None:
        with mutex.acquire():
            with lock:
                state["inside"] += 1
                state["max"] = max(state["max"], state["inside"])
            time.sleep(0.01)  # the guarded work
            with lock:
                state["inside"] -= 1
                state["done"] += 1

    for _ in range(6):
        guarded.send()
    stub_broker.join(guarded.queue_name, timeout=20_000)
    assert state["done"] == 6
    assert state["max"] == 1


# Redis backend --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_redis_connection_errors_become_connection_closed() -> None:
    backend = RedisBackend(url=f"redis://127.0.0.1:{_closed_port()}/0", socket_connect_timeout=1)
    with pytest.raises(ConnectionClosed, match="Redis"), ConcurrentRateLimiter(backend, "k").acquire():
        pass
    with pytest.raises(ConnectionClosed):
        Barrier(backend, "k").create(2)
    backend.close()


@pytest.mark.redis
def test_redis_keys_are_namespaced_and_all_expire(redis_url: str, redis_client: redis.Redis) -> None:
    backend = RedisBackend(url=redis_url, namespace="rl-test")
    key = unique_key()
    with ConcurrentRateLimiter(backend, key, limit=2, ttl=60_000).acquire():
        pass
    held = ConcurrentRateLimiter(backend, key, limit=2, ttl=60_000).acquire()
    held.__enter__()
    try_acquire(WindowRateLimiter(backend, key, limit=2, window=5))
    try_acquire(BucketRateLimiter(backend, key, limit=2, bucket=5000))
    barrier = Barrier(backend, key, ttl=60_000)
    barrier.create(3)
    barrier.wait(block=False)
    barrier.wait(block=False)
    barrier.wait(block=False)  # releases: two notifications with nobody waiting
    names = sorted(name.decode() for name in redis_client.scan_iter(match="*"))
    assert names == sorted(
        f"rl-test:{kind}:{name}"
        for kind, name in [
            ("lease", key),
            ("window", key),
            ("bucket", key),
            ("value", key),
            ("members", f"{key}@arrived"),
            ("events", key),
        ]
    )
    for name in names:
        assert 0 < redis_client.pttl(name) <= 60_000, name
    held.__exit__(None, None, None)
    backend.flush()
    assert list(redis_client.scan_iter(match="*")) == []
    backend.close()


@pytest.mark.redis
def test_redis_wait_blocks_without_polling(redis_url: str, redis_client: redis.Redis) -> None:
    backend = RedisBackend(url=redis_url)
    barrier = Barrier(backend, unique_key())
    barrier.create(2)
    redis_client.config_resetstat()
    assert barrier.wait(timeout=400) is False
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_blpop"]["calls"] == 1
    backend.close()


@pytest.mark.redis
def test_redis_wait_longer_than_the_socket_timeout(redis_url: str) -> None:
    backend = RedisBackend(url=redis_url, socket_timeout=0.3)
    barrier = Barrier(backend, unique_key())
    barrier.create(2)
    started = time.monotonic()
    assert barrier.wait(timeout=800) is False
    assert time.monotonic() - started >= 0.8 - CLOCK_SLACK
    backend.close()


@pytest.mark.redis
def test_redis_backend_reuses_a_django_redis_cache(redis_url: str) -> None:
    caches = {"limits": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    with override_settings(CACHES=caches):
        from_cache = RedisBackend(cache="limits")
        from_url = RedisBackend(url=redis_url)
        key = unique_key()
        with ConcurrentRateLimiter(from_cache, key).acquire():
            assert not try_acquire(ConcurrentRateLimiter(from_url, key))
        assert try_acquire(ConcurrentRateLimiter(from_url, key))
        from_cache.close()  # not ours: left open
        assert from_cache.client.ping()
        from_url.close()


@pytest.mark.redis
def test_redis_backend_accepts_a_client(redis_client: redis.Redis) -> None:
    backend = RedisBackend(client=redis_client)
    limiter = ConcurrentRateLimiter(backend, unique_key())
    with limiter.acquire():
        assert not try_acquire(limiter)


def test_redis_backend_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="only one of url=, client= or cache="):
        RedisBackend(url="redis://127.0.0.1:6379/0", cache="default")
    with pytest.raises(ValueError, match="namespace"):
        RedisBackend(namespace="")
    caches = {"local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches):
        # The cache is looked up on first use, not at import time.
        not_redis = ConcurrentRateLimiter(RedisBackend(cache="local"), "k")
        with pytest.raises(ImproperlyConfigured, match="not a Redis cache"):
            try_acquire(not_redis)
        missing = ConcurrentRateLimiter(RedisBackend(cache="missing"), "k")
        with pytest.raises(ImproperlyConfigured, match="no CACHES"):
            try_acquire(missing)


@pytest.mark.redis
def test_redis_backend_reuses_djangos_own_redis_cache(redis_url: str) -> None:
    caches = {"limits": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}}
    with override_settings(CACHES=caches):
        from_cache = RedisBackend(cache="limits")
        from_url = RedisBackend(url=redis_url)
        key = unique_key()
        with ConcurrentRateLimiter(from_cache, key).acquire():
            assert not try_acquire(ConcurrentRateLimiter(from_url, key))
        from_url.close()

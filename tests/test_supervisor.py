"""The supervisor's and the runworkers command's pieces that run in this
process: argument validation, the banner (no secrets), the pid file, logging.
The processes themselves are tested in test_runworkers.py."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from django_actors.management.commands.runworkers import configure_logging
from django_actors.supervisor import (
    PidFileError,
    Supervisor,
    SupervisorOptions,
    describe_backend,
    describe_status,
    mask_url,
)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@cache.internal:6379/0", "redis://:***@cache.internal:6379/0"),
        ("rediss://app:s3cret@cache.internal:6380/1", "rediss://app:***@cache.internal:6380/1"),
        ("redis://app@cache.internal/0", "redis://app@cache.internal/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1/0?password=s3cret&db=2", "redis://127.0.0.1/0?password=***&db=2"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("postgres://u:p%40ss@db/app?sslmode=require", "postgres://u:***@db/app?sslmode=require"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url)


def test_describe_backend_shows_no_secret() -> None:
    text = describe_backend(
        "django_actors.brokers.redis.RedisBroker",
        {"url": "redis://:s3cret@h:6379/0", "password": "other-secret", "namespace": "prod"},
    )
    assert text == "django_actors.brokers.redis.RedisBroker (redis://:***@h:6379/0, namespace='prod')"
    assert describe_backend("x.DatabaseBroker", {}) == "x.DatabaseBroker"
    assert describe_backend("x.RedisBroker", {"cache": "default"}) == "x.RedisBroker (cache='default')"


def test_describe_status() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert describe_status(status) == "exited with code 3"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert describe_status(status) == "was killed by SIGKILL"


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="processes must be at least 1"):
        SupervisorOptions(processes=0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        SupervisorOptions(threads=0)
    with pytest.raises(ValueError, match="shutdown_timeout must not be negative"):
        SupervisorOptions(shutdown_timeout=-1)


def test_the_banner_names_broker_results_queues_and_sizes_without_secrets() -> None:
    setting = {
        "BROKER": {
            "BACKEND": "django_actors.brokers.redis.RedisBroker",
            "OPTIONS": {"url": "redis://:hunter2@redis.internal:6379/3"},
        },
        "RESULTS": {
            "BACKEND": "django_actors.results.backends.redis.RedisBackend",
            "OPTIONS": {"url": "redis://user:hunter2@redis.internal:6379/4"},
        },
    }
    with override_settings(DJANGO_ACTORS=setting):
        banner = Supervisor(SupervisorOptions(processes=3, threads=5, queues=("default", "nobody-uses-this"))).banner()
    assert "hunter2" not in banner
    assert "3 process(es) x 5 thread(s)" in banner
    assert "broker:  django_actors.brokers.redis.RedisBroker (redis://:***@redis.internal:6379/3)" in banner
    assert "results: django_actors.results.backends.redis.RedisBackend (redis://user:***@redis.internal:6379/4)" in (
        banner
    )
    assert "queues:  default, nobody-uses-this" in banner
    (warning,) = [line for line in banner.splitlines() if "warning:" in line]
    assert "no actor in this project uses queue(s)" in warning and warning.endswith("nobody-uses-this")


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--processes", "0"], "argument --processes/-p: '0' must be at least 1"),
        (["--threads", "many"], "argument --threads/-t: 'many' is not an integer"),
        (["--queues", "has space"], "Invalid queue name 'has space'"),
        (["--shutdown-timeout", "-1"], "must be a finite number of seconds, 0 or more"),
        (["--shutdown-timeout", "nan"], "must be a finite number of seconds, 0 or more"),
        (["--prefetch", "0"], "argument --prefetch: '0' must be at least 1"),
    ],
)
def test_bad_arguments_are_rejected_by_argparse(arguments: list[str], error: str) -> None:
    with pytest.raises(CommandError, match="Error: ") as raised:
        call_command("runworkers", *arguments)
    assert error in str(raised.value)


@pytest.fixture
def supervisor_with_pid_file(tmp_path: Path) -> Iterator[tuple[Supervisor, Path]]:
    path = tmp_path / "workers.pid"
    yield Supervisor(SupervisorOptions(pid_file=str(path))), path


def test_a_stale_pid_file_is_replaced_and_removed(supervisor_with_pid_file: tuple[Supervisor, Path]) -> None:
    supervisor, path = supervisor_with_pid_file
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(finished.stdout)  # a process that no longer exists
    supervisor._write_pid_file()
    assert path.read_text() == f"{os.getpid()}\n"
    supervisor._remove_pid_file()
    assert not path.exists()


def test_a_pid_file_naming_a_live_process_is_refused(supervisor_with_pid_file: tuple[Supervisor, Path]) -> None:
    supervisor, path = supervisor_with_pid_file
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(PidFileError, match=f"names process {os.getppid()}, which is still running"):
        supervisor._write_pid_file()
    supervisor._remove_pid_file()
    assert path.read_text() == f"{os.getppid()}\n"  # not ours: left alone


def test_verbosity_sets_the_log_level() -> None:
    package = logging.getLogger("django_actors")
    before = (package.level, list(package.handlers))
    try:
        configure_logging(0)
        assert package.level == logging.WARNING
        configure_logging(1)
        assert package.level == logging.INFO
        configure_logging(2)
        assert package.level == logging.DEBUG
    finally:
        package.setLevel(before[0])
        package.handlers[:] = before[1]

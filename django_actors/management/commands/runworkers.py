"""``manage.py runworkers``: run worker processes that consume the broker's queues.

The process logic lives in :mod:`django_actors.supervisor`; this module only
parses arguments, sets up logging and starts a
:class:`~django_actors.supervisor.Supervisor` (under Django's autoreloader
with ``--reload``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from django_actors.broker import validate_queue_name
from django_actors.supervisor import PidFileError, Supervisor, SupervisorOptions

#: Log format of the worker processes: the pid tells them apart.
LOG_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] %(levelname)s %(name)s: %(message)s"


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer.") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1.")
    return number


def non_negative_seconds(value: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds.") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a finite number of seconds, 0 or more.")
    return number


def queue_name(value: str) -> str:
    """argparse type: a valid queue name."""
    try:
        return validate_queue_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def configure_logging(verbosity: int) -> None:
    """Log django_actors at WARNING (0), INFO (1, the default) or DEBUG (2);
    3 also sets the root logger to DEBUG. A handler is added only where the
    project's LOGGING configured none."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    package_logger = logging.getLogger("django_actors")
    package_logger.setLevel(level)
    root = logging.getLogger()
    if verbosity >= 3:
        root.setLevel(logging.DEBUG)
    if not package_logger.handlers and not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        (root if verbosity >= 3 else package_logger).addHandler(handler)


class Command(BaseCommand):
    help = (
        "Run worker processes that consume the broker's queues. SIGTERM or SIGINT stops them "
        "gracefully (a second one kills them), SIGHUP restarts them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--processes",
            "-p",
            type=positive_int,
            default=available_cpus(),
            help="Worker processes to run (default: the number of CPUs available).",
        )
        parser.add_argument(
            "--threads", "-t", type=positive_int, default=8, help="Worker threads per process (default: 8)."
        )
        parser.add_argument(
            "--queues",
            "-Q",
            nargs="+",
            type=queue_name,
            metavar="QUEUE",
            help="Consume only these queues (default: every queue an actor uses).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the workers when a Python file changes (development only).",
        )
        parser.add_argument("--pid-file", metavar="PATH", help="Write the supervisor's pid to this file.")
        parser.add_argument(
            "--shutdown-timeout",
            type=non_negative_seconds,
            default=30.0,
            metavar="SECONDS",
            help="On stop, how long running messages get to finish before the workers exit (default: 30).",
        )
        parser.add_argument(
            "--prefetch",
            type=positive_int,
            default=None,
            help="Unacknowledged messages each queue's consumer may hold (default: twice --threads).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not hasattr(os, "fork"):
            raise CommandError("runworkers forks its worker processes: it needs os.fork (Linux, macOS, BSD).")
        configure_logging(options["verbosity"])
        supervisor_options = SupervisorOptions(
            processes=options["processes"],
            threads=options["threads"],
            queues=tuple(dict.fromkeys(options["queues"])) if options["queues"] else None,
            shutdown_timeout=options["shutdown_timeout"],
            prefetch=options["prefetch"],
            pid_file=options["pid_file"],
        )
        if options["reload"]:
            autoreload.run_with_reloader(self._run_reloaded, supervisor_options)
            return
        code = self._run(supervisor_options)
        if code:
            raise CommandError(f"The workers stopped with exit code {code}.", returncode=code)

    def _run(self, supervisor_options: SupervisorOptions) -> int:
        supervisor = Supervisor(supervisor_options, write=self.stdout.write)
        try:
            return supervisor.run()
        except PidFileError as exc:
            raise CommandError(str(exc)) from exc

    def _run_reloaded(self, supervisor_options: SupervisorOptions) -> None:
        """Under the autoreloader: runs in a thread of the reloaded process."""
        supervisor = Supervisor(supervisor_options, write=self.stdout.write)
        try:
            code = supervisor.run()
        except PidFileError as exc:
            self.stderr.write(str(exc))
            code = 1
        if supervisor.exiting:
            return  # the process is exiting for a reload; let it
        # The workers stopped on their own (e.g. a configuration error): end the
        # process, which the reloader's main thread would otherwise keep alive.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if code != 3 else 1)

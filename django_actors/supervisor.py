"""The process supervisor behind ``manage.py runworkers``.

A :class:`Supervisor` forks worker processes and keeps them running:

- each worker process builds its own broker (never the parent's), emits
  ``process_boot``, runs a :class:`~django_actors.worker.Worker`, and on
  stop finishes its in-flight messages within the shutdown timeout, hands
  back what it prefetched, emits ``process_stop`` and exits 0;
- a worker process that dies is restarted, with a log line (and a growing
  pause when it keeps dying at once);
- SIGTERM or SIGINT: the workers stop gracefully and the supervisor exits 0;
  a second SIGTERM or SIGINT kills them at once (their unfinished messages
  are delivered again later) and the supervisor exits 1;
- SIGHUP: a new set of worker processes is started and the old ones stop
  gracefully;
- a worker process whose supervisor disappeared stops gracefully by itself.

SIGINT and repeated SIGTERMs sent to a worker process itself (a terminal's
Ctrl-C reaches the whole process group; systemd signals every process) only
ask it to stop gracefully: the supervisor alone decides to kill.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from .redaction import mask_url as mask_url  # re-exported: it used to live here

logger = logging.getLogger(__name__)

#: Exit codes.
EXIT_OK = 0
EXIT_FORCED = 1
#: A worker process could not build its broker from settings (sysexits' EX_CONFIG).
EXIT_CONFIG = 78

#: A worker process that lived at least this long (seconds) is restarted at once.
STABLE_AFTER = 5.0
#: The longest pause before restarting a worker process that keeps dying (seconds).
MAX_RESTART_PAUSE = 30.0
#: How long past the shutdown timeout the supervisor waits before killing (seconds).
KILL_GRACE = 5.0

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisorOptions:
    """What to run.

    Parameters:
      processes: how many worker processes.
      threads: worker threads per process.
      queues: the queues to consume; every declared queue when ``None``.
      shutdown_timeout: seconds a stopping worker gives its running messages.
      worker_timeout: milliseconds a fetch waits (bounds how fast a stop is noticed).
      prefetch: unacked messages each consumer may hold (twice ``threads`` by default).
      pid_file: where to write the supervisor's pid.
    """

    processes: int = 1
    threads: int = 8
    queues: tuple[str, ...] | None = None
    shutdown_timeout: float = 30.0
    worker_timeout: int = 1000
    prefetch: int | None = None
    pid_file: str | None = None

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, not {self.processes!r}.")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads!r}.")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must not be negative, not {self.shutdown_timeout!r}.")


class PidFileError(RuntimeError):
    """The pid file names a supervisor that is still running, or cannot be written."""


def describe_backend(backend: str, options: Mapping[str, Any]) -> str:
    """A one-line description of a configured backend that never shows a secret."""
    details = []
    if isinstance(options.get("url"), str):
        details.append(mask_url(options["url"]))
    for key in ("cache", "database", "using", "namespace"):
        if isinstance(options.get(key), str):
            details.append(f"{key}={options[key]!r}")
    return f"{backend} ({', '.join(details)})" if details else backend


def describe_status(status: int) -> str:
    """Describe a wait status: ``exited with code 1``, ``was killed by SIGKILL``."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


class _Waker:
    """A self-pipe woken by signals (``signal.set_wakeup_fd``), to sleep until
    a signal or a timeout without polling."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.installed = False

    def install(self) -> None:
        """Make signals write to the pipe (main thread only)."""
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.installed = True

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less if a signal arrives."""
        try:
            ready, _, _ = select.select([self.read_fd], [], [], max(timeout, 0))
        except OSError as exc:  # pragma: no cover - EINTR is retried by Python
            if exc.errno != errno.EINTR:
                raise
            return
        if ready:
            while True:
                try:
                    if not os.read(self.read_fd, 4096):
                        break
                except BlockingIOError:
                    break

    def close(self) -> None:
        if self.installed:
            signal.set_wakeup_fd(-1)
            self.installed = False
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclasses.dataclass
class _Child:
    slot: int
    pid: int
    started: float
    retiring: bool = False


class Supervisor:
    """Run and watch worker processes.

    Parameters:
      options: what to run.
      write: where the startup banner goes (``print`` by default).
    """

    def __init__(self, options: SupervisorOptions, *, write: Callable[[str], Any] | None = None) -> None:
        self.options = options
        self.write = write or print
        self._children: dict[int, _Child] = {}
        self._failures = [0] * options.processes
        self._restart_at: dict[int, float] = {}
        self._stop_signals = 0
        self._hup = False
        self._stopping = False
        self._kill_at: float | None = None
        self._exit_code = EXIT_OK
        self._waker: _Waker | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._pid_file_written = False
        self._finished = threading.Event()
        #: Set when the process is exiting under the autoreloader (see ``run``).
        self.exiting = False

    # Entry point -------------------------------------------------------------------

    def run(self) -> int:
        """Start the worker processes and supervise them until stopped.

        Returns the exit code: 0 after a graceful stop, 1 after a forced one,
        78 when the worker processes cannot build the broker from settings.

        Raises:
          PidFileError: the pid file names a running process.
        """
        self._write_pid_file()
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._waker = _Waker()
        try:
            if in_main_thread:
                self._install_signal_handlers()
            else:
                # Under the autoreloader this runs in a thread: no signal
                # handlers here; stop the workers when the process exits.
                atexit.register(self._stop_at_exit)
            self.write(self.banner())
            for slot in range(self.options.processes):
                self._spawn(slot)
            return self._loop()
        finally:
            if in_main_thread:
                self._restore_signal_handlers()
            elif not self.exiting:
                atexit.unregister(self._stop_at_exit)
            self._waker.close()
            self._remove_pid_file()
            self._finished.set()

    def banner(self) -> str:
        """The startup banner: broker, results, queues, processes and threads. No secrets."""
        from . import __version__
        from .actor import registered_actors
        from .conf import get_settings

        config = get_settings()
        actors = registered_actors()
        declared = sorted({actor.queue_name for actor in actors})
        lines = [
            f"django_actors {__version__}: {self.options.processes} process(es) x "
            f"{self.options.threads} thread(s), supervisor pid {os.getpid()}",
            f"  broker:  {describe_backend(config.broker.backend, config.broker.options)}",
            "  results: "
            + (describe_backend(config.results.backend, config.results.options) if config.results else "none"),
        ]
        if self.options.queues is None:
            lines.append(f"  queues:  all ({', '.join(declared) or 'none declared yet'})")
        else:
            lines.append(f"  queues:  {', '.join(self.options.queues)}")
            idle = [queue for queue in self.options.queues if queue not in declared]
            if idle:
                lines.append(f"  warning: no actor in this project uses queue(s) {', '.join(idle)}")
        lines.append(f"  actors:  {len(actors)}; shutdown timeout {self.options.shutdown_timeout:g}s")
        return "\n".join(lines)

    # The supervisor loop ----------------------------------------------------------------

    def _loop(self) -> int:
        assert self._waker is not None
        poll = 1.0 if self._waker.installed else 0.2
        while True:
            self._reap()
            if self._stop_signals >= 2:
                return self._kill_all()
            if self._stop_signals == 1 and not self._stopping:
                logger.info("Stopping %d worker process(es) gracefully.", len(self._children))
                self._begin_stop()
            now = time.monotonic()
            if self._stopping:
                if not self._children:
                    logger.info("All worker processes stopped.")
                    return self._exit_code
                if self._kill_at is not None and now >= self._kill_at:
                    logger.warning(
                        "Worker process(es) %s still running %gs after the shutdown timeout; killing them.",
                        ", ".join(map(str, self._children)),
                        KILL_GRACE,
                    )
                    self._signal_children(signal.SIGKILL)
                    self._exit_code = EXIT_FORCED
                    self._kill_at = None
            else:
                if self._hup:
                    self._hup = False
                    self._restart_all()
                for slot, due in sorted(self._restart_at.items()):
                    if now >= due:
                        del self._restart_at[slot]
                        self._spawn(slot)
            timeout = poll
            if self._restart_at and not self._stopping:
                timeout = min(timeout, max(min(self._restart_at.values()) - now, 0))
            if self._kill_at is not None:
                timeout = min(timeout, max(self._kill_at - now, 0))
            self._waker.wait(timeout)

    def _begin_stop(self, code: int | None = None) -> None:
        self._stopping = True
        if code is not None:
            self._exit_code = code
        self._restart_at.clear()
        self._signal_children(signal.SIGTERM)
        self._kill_at = time.monotonic() + self.options.shutdown_timeout + KILL_GRACE

    def _kill_all(self) -> int:
        logger.warning("Second stop signal: killing %d worker process(es) now.", len(self._children))
        self._signal_children(signal.SIGKILL)
        for pid in list(self._children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._children.pop(pid, None)
        return EXIT_FORCED

    def _signal_children(self, signum: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _restart_all(self) -> None:
        old = [child for child in self._children.values() if not child.retiring]
        logger.info("SIGHUP: starting %d new worker process(es), stopping the old ones.", len(old))
        for child in old:
            child.retiring = True
        self._restart_at.clear()
        for slot in range(self.options.processes):
            self._spawn(slot)
        for child in old:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    def _reap(self) -> None:
        # One waitpid per child: never reap a process this supervisor did not start.
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                done, status = pid, 0
            if done:
                child = self._children.pop(pid, None)
                if child is not None:
                    self._child_exited(child, status)

    def _child_exited(self, child: _Child, status: int) -> None:
        how = describe_status(status)
        code = os.waitstatus_to_exitcode(status)
        if self._stopping or child.retiring:
            level = logging.INFO if code == 0 else logging.WARNING
            logger.log(level, "Worker process %d (slot %d) %s.", child.pid, child.slot, how)
            if code != 0 and self._stopping and self._exit_code == EXIT_OK:
                self._exit_code = EXIT_FORCED
            return
        if code == EXIT_CONFIG:
            logger.error(
                "Worker process %d cannot build the broker from settings (see its error above); stopping.",
                child.pid,
            )
            self._begin_stop(EXIT_CONFIG)
            return
        lived = time.monotonic() - child.started
        if lived >= STABLE_AFTER:
            self._failures[child.slot] = 0
        self._failures[child.slot] += 1
        failures = self._failures[child.slot]
        pause = 0.0 if failures == 1 else min(0.5 * 2 ** (failures - 2), MAX_RESTART_PAUSE)
        logger.warning(
            "Worker process %d (slot %d) %s after %.1fs; restarting it%s.",
            child.pid,
            child.slot,
            how,
            lived,
            f" in {pause:g}s" if pause else "",
        )
        self._restart_at[child.slot] = time.monotonic() + pause

    # Signals in the supervisor -------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        assert self._waker is not None
        self._waker.install()
        handlers: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGHUP: self._on_hup,
            signal.SIGCHLD: self._on_child,
        }
        for signum, handler in handlers.items():
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers.clear()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signals += 1

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._hup = True

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        """Nothing to do: the wakeup fd already woke the loop, which reaps."""

    def _stop_at_exit(self) -> None:
        """Under the autoreloader the supervisor runs in a thread and the
        process exits on a code change: ask the loop for a graceful stop and
        wait for it, so the old workers finish before new ones start."""
        self.exiting = True
        if self._finished.is_set():
            return
        self._stop_signals = max(self._stop_signals, 1)
        if not self._finished.wait(self.options.shutdown_timeout + KILL_GRACE + 2):
            self._signal_children(signal.SIGKILL)

    # Worker processes ----------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        from django.db import connections

        # Nothing the children could share: no database connection crosses a fork.
        connections.close_all()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            logger.exception("Cannot fork a worker process for slot %d; retrying in 1s.", slot)
            self._restart_at[slot] = time.monotonic() + 1
            return
        if pid == 0:  # pragma: no cover - runs in the child, measured by the process tests
            code = EXIT_FORCED
            try:
                code = self._child_main(slot, blocked)
            except BaseException:
                logger.exception("Worker process %d failed.", os.getpid())
            finally:
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._children[pid] = _Child(slot=slot, pid=pid, started=time.monotonic())
        logger.debug("Started worker process %d (slot %d).", pid, slot)

    def _child_main(self, slot: int, mask: set[int | signal.Signals]) -> int:
        """The body of a worker process; returns its exit code."""
        from . import broker as broker_module
        from .worker import Worker

        parent = os.getppid()
        threading.current_thread().name = "MainThread"  # under --reload it was the reloader's thread
        # Forget the supervisor's signal state: its pipe, its handlers, its atexit hook.
        if self._waker is not None:
            if self._waker.installed:
                signal.set_wakeup_fd(-1)
                self._waker.installed = False
            self._waker.close()
        atexit.unregister(self._stop_at_exit)
        self._children.clear()
        waker = _Waker()
        waker.install()
        stop_requests = [0]

        def on_stop(signum: int, frame: FrameType | None) -> None:
            stop_requests[0] += 1

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

        # A fresh broker for this process; the parent's (if any) is forgotten,
        # not closed: its sockets belong to the parent.
        broker_module._broker = None
        try:
            broker = broker_module.get_broker()
        except Exception:
            # Building a broker connects nowhere yet: what fails here is its
            # configuration, and restarting would fail the same way.
            logger.exception("Worker process %d cannot build the broker from settings.", os.getpid())
            return EXIT_CONFIG
        broker.emit_after("process_boot")
        worker = Worker(
            broker,
            queues=self.options.queues,
            worker_threads=self.options.threads,
            worker_timeout=self.options.worker_timeout,
            prefetch=self.options.prefetch,
        )
        worker.start()
        logger.info("Worker process %d (slot %d) is ready.", os.getpid(), slot)
        while not stop_requests[0]:
            if os.getppid() != parent:
                logger.warning("Worker process %d lost its supervisor; stopping.", os.getpid())
                break
            waker.wait(1.0)
        logger.info(
            "Worker process %d stopping: finishing running messages (up to %gs).",
            os.getpid(),
            self.options.shutdown_timeout,
        )
        worker.stop(timeout=int(self.options.shutdown_timeout * 1000))
        broker.emit_before("process_stop")
        broker.close()
        broker.emit_after("process_stop")
        logger.info("Worker process %d stopped.", os.getpid())
        return EXIT_OK

    # The pid file ------------------------------------------------------------------------

    def _write_pid_file(self) -> None:
        path = self.options.pid_file
        if not path:
            return
        try:
            with open(path) as handle:
                existing = int(handle.read().strip() or 0)
        except FileNotFoundError:
            existing = 0
        except (OSError, ValueError):
            existing = 0
        if existing and existing != os.getpid() and _alive(existing):
            raise PidFileError(f"The pid file {path} names process {existing}, which is still running.")
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            os.replace(temporary, path)
        except OSError as exc:
            raise PidFileError(f"Cannot write the pid file {path}: {exc}") from exc
        self._pid_file_written = True

    def _remove_pid_file(self) -> None:
        path = self.options.pid_file
        if not path or not self._pid_file_written:
            return
        try:
            with open(path) as handle:
                if handle.read().strip() == str(os.getpid()):
                    os.unlink(path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

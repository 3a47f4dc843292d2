"""A private redis-server on loopback for the benchmarks (no persistence)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis


class RedisServer:
    """Start ``redis-server`` on a free loopback port; :meth:`stop` removes it.

    Raises:
      RuntimeError: redis-server is not installed or does not answer.
    """

    def __init__(self) -> None:
        executable = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server); "
                "or pass --url to use a running Redis (its database is flushed)."
            )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="django-actors-bench-")
        self.proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--maxclients", "10000"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

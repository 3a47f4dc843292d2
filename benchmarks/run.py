"""django_actors against dramatiq and Celery, in one run, on one Redis.

    python -m benchmarks.run            # the full run (about 10 minutes on 2 cores)
    python -m benchmarks.run --quick    # a smoke run (about a minute)

Needs the ``bench`` extra (``pip install -e '.[bench]'``: dramatiq and
Celery, never runtime dependencies) and ``redis-server`` on the PATH: a
private one is started on a free loopback port (no persistence) and stopped
at the end. ``--url`` uses a running Redis instead, and FLUSHES its database.

Measured for each system, with its public API and usual production setup
(see :mod:`benchmarks.subjects`):

1. enqueue: a loop of ``send()`` (Celery: ``delay()``) of 10,000 messages,
   the loops of the systems in ten interleaved slices so that a change in
   machine load hits them alike; and ``group(messages).run()`` (Celery:
   ``group(signatures).apply_async()``) of 10,000 messages built beforehand;
2. drain: 20,000 no-op messages already queued, 2 worker processes x 8
   threads; from the moment the (already imported) workers are told to start
   until the last message ran;
3. latency: from ``send()`` until the result is available, 1,000 messages
   one after the other (p50 and p99), with the same workers running;
4. a 10-step pipeline end to end, and a 1,000-member group until its
   completion callback ran (Celery: a chain, and a chord);
5. memory: the RSS of one worker process (8 threads) idle, then after every
   tenth of 100,000 messages; "growth" is the last sample minus the first
   (after 10,000, once the process is warm).

Rounds (``--rounds``, default 3) repeat 1 to 4 with the systems' order
rotated; each figure is the median of its samples (latencies: percentiles
of all samples). The table goes to stdout and, with the machine, the load
and the raw samples, to ``benchmarks/results/latest.json`` (``quick.json``
for ``--quick``; ``--output`` to choose).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

from .redis_server import RedisServer
from .subjects import SUBJECTS, Shared, Subject, worker_process

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OURS = "django_actors"
#: The figures measured once per round, by all systems in turn.
ROUND_FIGURES = ("send", "group_run", "drain")


@dataclasses.dataclass(frozen=True)
class Config:
    """The sizes of one run."""

    rounds: int = 3
    enqueue: int = 10_000
    group: int = 10_000
    drain: int = 20_000
    processes: int = 2
    threads: int = 8
    latency: int = 1_000
    pipeline_steps: int = 10
    pipelines: int = 20
    group_members: int = 1_000
    groups: int = 3
    memory: int = 100_000
    memory_samples: int = 10


QUICK = Config(
    rounds=1, enqueue=1_000, group=1_000, drain=2_000, latency=100, pipelines=3, group_members=200, groups=1,
    memory=10_000,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Figure:
    """One row of the table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    #: The least "times better than dramatiq" this figure must reach (None: no target).
    target: float | None = None


def figures(config: Config) -> list[Figure]:
    workers = f"{config.processes} proc x {config.threads} threads"
    warm = config.memory // config.memory_samples
    return [
        Figure("send", f"send() loop, {config.enqueue:,} msgs", "msg/s", True, 2.0),
        Figure("group_run", f"group([...]).run(), {config.group:,} msgs", "msg/s", True, 10.0),
        Figure("drain", f"drain {config.drain:,} no-op, {workers}", "msg/s", True, 2.0),
        Figure("latency_p50", f"latency send->result p50 ({config.latency:,} seq.)", "ms", False, 2.0),
        Figure("latency_p99", "latency send->result p99", "ms", False),
        Figure("pipeline", f"pipeline of {config.pipeline_steps} steps, end to end", "ms", False),
        Figure("group_callback", f"group of {config.group_members:,} + completion callback", "ms", False),
        Figure("rss_idle", "worker RSS idle", "MB", False),
        Figure("rss_after", f"worker RSS after {config.memory:,} msgs", "MB", False),
        Figure("rss_growth", f"RSS growth, {warm:,} -> {config.memory:,} msgs", "MB", False),
    ]


# Measurements -----------------------------------------------------------------------------------


class Bench:
    """Runs the measurements and keeps the samples."""

    def __init__(self, url: str, subjects: dict[str, Subject], config: Config) -> None:
        self.url = url
        self.subjects = subjects
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.shared = Shared(self.context)
        self.client = redis.Redis.from_url(url)
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.rss_curves: dict[str, list[float]] = {}

    def add(self, key: str, name: str, value: float) -> None:
        self.samples.setdefault(key, {}).setdefault(name, []).append(value)

    def flush(self) -> None:
        self.client.flushdb()

    def log(self, text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # 1. enqueue

    def enqueue(self, order: list[str]) -> None:
        config = self.config
        self.flush()
        for name in order:  # connections open, scripts loaded
            for n in range(50):
                self.subjects[name].send(n)
        self.flush()
        spent = dict.fromkeys(order, 0.0)
        size = max(config.enqueue // 10, 1)
        for first in range(0, config.enqueue, size):
            for name in order:
                send = self.subjects[name].send
                start = time.perf_counter()
                for n in range(first, min(first + size, config.enqueue)):
                    send(n)
                spent[name] += time.perf_counter() - start
        for name in order:
            self.add("send", name, config.enqueue / spent[name])
        for name in order:
            self.flush()
            members = self.subjects[name].group_members(config.group)
            start = time.perf_counter()
            self.subjects[name].group_run(members)
            self.add("group_run", name, config.group / (time.perf_counter() - start))
        self.flush()
        self.log("enqueue: " + ", ".join(f"{n} {self.samples['send'][n][-1]:,.0f}/s" for n in order))

    # 2-4. with workers running

    def _wait_done(self, what: str, timeout: float) -> None:
        if not self.shared.done.wait(timeout):
            raise RuntimeError(
                f"{what}: not done after {timeout:.0f}s ({self.shared.count.value} of {self.shared.target.value})"
            )

    def _start_workers(self, name: str, processes: int) -> _Workers:
        return _Workers(self.context, name, self.url, self.config.threads, self.shared, processes)

    def with_workers(self, name: str) -> None:
        config, subject, shared = self.config, self.subjects[name], self.shared
        self.flush()
        shared.reset()
        subject.enqueue_noops(0, config.drain)
        shared.expect(config.drain)
        workers = self._start_workers(name, config.processes)
        try:
            begin = time.time()
            workers.go()
            self._wait_done(f"{name} drain", max(120.0, config.drain / 50))
            self.add("drain", name, config.drain / (shared.end.value - begin))
            workers.wait_started()

            for n in range(20):  # warm: result keys, subscriptions, scripts
                subject.round_trip(n, 30)
            latencies = []
            for n in range(config.latency):
                start = time.perf_counter()
                if subject.round_trip(n, 30) != n:
                    raise RuntimeError(f"{name}: echo({n}) returned something else")
                latencies.append((time.perf_counter() - start) * 1000)
            self.samples.setdefault("latency", {}).setdefault(name, []).extend(latencies)

            for _ in range(config.pipelines):
                start = time.perf_counter()
                if subject.pipeline(config.pipeline_steps, 60) != config.pipeline_steps:
                    raise RuntimeError(f"{name}: the pipeline returned something else")
                self.add("pipeline", name, (time.perf_counter() - start) * 1000)

            for _ in range(config.groups):
                shared.reset()
                begin = time.time()
                subject.group_with_callback(config.group_members)
                self._wait_done(f"{name} group callback", 120)
                self.add("group_callback", name, (shared.end.value - begin) * 1000)
        finally:
            workers.stop()
        self.log(
            f"{name}: drain {self.samples['drain'][name][-1]:,.0f}/s, "
            f"p50 {statistics.median(latencies):.2f} ms, pipeline {self.samples['pipeline'][name][-1]:.1f} ms, "
            f"group {self.samples['group_callback'][name][-1]:.0f} ms"
        )

    # 5. memory

    def memory(self, name: str) -> None:
        config, subject, shared = self.config, self.subjects[name], self.shared
        self.flush()
        shared.reset()
        workers = self._start_workers(name, 1)
        try:
            workers.go()
            workers.wait_started()
            pid = workers.procs[0].pid
            assert pid is not None
            time.sleep(0.5)  # let the worker's threads settle before the idle sample
            self.add("rss_idle", name, rss_mb(pid))
            chunk = config.memory // config.memory_samples
            curve = []
            for k in range(config.memory_samples):
                shared.expect(chunk)
                subject.enqueue_noops(k * chunk, chunk)
                self._wait_done(f"{name} memory", max(120.0, chunk / 20))
                curve.append(rss_mb(pid))
            self.rss_curves[name] = curve
            self.add("rss_after", name, curve[-1])
            self.add("rss_growth", name, curve[-1] - curve[0])
        finally:
            workers.stop()
        self.log(f"{name}: RSS idle {self.samples['rss_idle'][name][-1]:.1f} MB, curve {[round(v, 1) for v in curve]}")


class _Workers:
    """Worker processes of one system, started with the spawn method."""

    def __init__(self, context: Any, name: str, url: str, threads: int, shared: Shared, processes: int) -> None:
        self._go = context.Event()
        self._stop = context.Event()
        self.ready = [context.Event() for _ in range(processes)]
        self.started = [context.Event() for _ in range(processes)]
        self.procs = [
            context.Process(
                target=worker_process,
                args=(name, url, threads, shared, self.ready[i], self._go, self.started[i], self._stop),
                name=f"bench-{name}-{i}",
                daemon=True,
            )
            for i in range(processes)
        ]
        for proc in self.procs:
            proc.start()
        deadline = time.monotonic() + 120
        for proc, ready in zip(self.procs, self.ready, strict=True):
            while not ready.wait(0.2):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"a {name} worker process did not start (exit code {proc.exitcode})")

    def go(self) -> None:
        self._go.set()

    def wait_started(self) -> None:
        for started in self.started:
            if not started.wait(120):
                raise RuntimeError("a worker did not start within 120 s")

    def stop(self) -> None:
        self._go.set()
        self._stop.set()
        for proc in self.procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join(10)


def rss_mb(pid: int) -> float:
    """The resident set size of a process, in MB (10^6 bytes)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except FileNotFoundError:
        pass
    import psutil  # type: ignore[import-untyped]  # not Linux: pip install psutil

    return float(psutil.Process(pid).memory_info().rss) / 1e6


# Report -------------------------------------------------------------------------------------------


def summarise(bench: Bench, config: Config) -> dict[str, dict[str, float]]:
    values: dict[str, dict[str, float]] = {}
    for key, by_name in bench.samples.items():
        if key == "latency":
            for name, samples in by_name.items():
                ordered = sorted(samples)
                values.setdefault("latency_p50", {})[name] = statistics.median(ordered)
                values.setdefault("latency_p99", {})[name] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        else:
            for name, samples in by_name.items():
                values.setdefault(key, {})[name] = statistics.median(samples)
    return values


def times_better(figure: Figure, ours: float, theirs: float) -> float | None:
    """How many times better django_actors is (above 1: better)."""
    if figure.key == "rss_growth":
        return None  # a difference around zero: no meaningful ratio
    if ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if figure.higher_is_better else theirs / ours


def build_report(bench: Bench, config: Config, names: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    values = summarise(bench, config)
    rows = []
    for figure in figures(config):
        by_name = values.get(figure.key, {})
        row: dict[str, Any] = {
            "key": figure.key,
            "label": figure.label,
            "unit": figure.unit,
            "higher_is_better": figure.higher_is_better,
            "values": {name: by_name.get(name) for name in names},
            "times_better": {},
        }
        ours = by_name.get(OURS)
        for name in names:
            if name != OURS and ours is not None and by_name.get(name) is not None:
                row["times_better"][name] = times_better(figure, ours, by_name[name])
        # Figures measured once per round: the ratio within each round too
        # (the systems ran back to back there, under the same load).
        rounds = bench.samples.get(figure.key, {})
        if figure.key in ROUND_FIGURES and OURS in rounds:
            row["times_better_per_round"] = {
                name: [times_better(figure, a, b) for a, b in zip(rounds[OURS], samples, strict=False)]
                for name, samples in rounds.items()
                if name != OURS
            }
        if figure.target is not None:
            ratio = row["times_better"].get("dramatiq")
            row["target"] = f">= {figure.target:g}x dramatiq"
            row["met"] = None if ratio is None else ratio >= figure.target
        elif figure.key == "rss_growth":
            growth = by_name.get(OURS)
            row["target"] = "no growth (< 1 MB)"
            row["met"] = None if growth is None else growth < 1.0
        rows.append(row)
    return {
        "meta": meta,
        "config": dataclasses.asdict(config),
        "rows": rows,
        "rss_curves_mb": bench.rss_curves,
        "samples": {
            key: {name: (sorted(v) if key == "latency" else v) for name, v in by_name.items()}
            for key, by_name in bench.samples.items()
            if key != "latency"
        },
    }


def format_table(report: dict[str, Any], names: list[str]) -> str:
    def number(value: float | None, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "msg/s":
            return f"{value:,.0f}"
        if abs(value) < 10:
            return f"{value:.2f}"
        return f"{value:,.1f}"

    others = [name for name in names if name != OURS]
    header = ["figure", "unit", *names, *[f"x vs {n}" for n in others], "target", "met"]
    lines = [header]
    for row in report["rows"]:
        ratios = [row["times_better"].get(n) for n in others]
        met = row.get("met")
        lines.append([
            row["label"],
            row["unit"],
            *[number(row["values"][n], row["unit"]) for n in names],
            *[("-" if r is None else f"{r:.2f}x") for r in ratios],
            row.get("target", ""),
            {True: "yes", False: "NO", None: ""}[met],
        ])  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        cells = [
            str(c).ljust(w) if j < 2 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def machine(url: str, names: list[str], subjects: dict[str, Subject]) -> dict[str, Any]:
    info = redis.Redis.from_url(url).info("server")
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "pure Python"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": info.get("redis_version"),
        "redis_py": redis.__version__,
        "redis_parser": parser,
        "versions": {name: subjects[name].version for name in names},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0],
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one round")
    parser.add_argument("--url", help="a running Redis to use (its database is FLUSHED); default: a private one")
    parser.add_argument("--systems", default=",".join(SUBJECTS), help="comma-separated, from: " + ", ".join(SUBJECTS))
    parser.add_argument("--rounds", type=int, help="rounds of measurements 1-4 (default 3, quick 1)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory measurement")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/latest.json)")
    options = parser.parse_args(argv)

    config = QUICK if options.quick else Config()
    if options.rounds:
        config = dataclasses.replace(config, rounds=options.rounds)
    names = [name.strip() for name in options.systems.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUBJECTS]
    if unknown or OURS not in names:
        parser.error(f"--systems must include {OURS} and only {', '.join(SUBJECTS)} (got {options.systems})")
    output = options.output or RESULTS_DIR / ("quick.json" if options.quick else "latest.json")

    server = None if options.url else RedisServer()
    url = options.url or server.url  # type: ignore[union-attr]
    load_before = os.getloadavg()
    try:
        try:
            subjects = {name: SUBJECTS[name](url) for name in names}
        except ImportError as exc:
            sys.exit(f"{exc}: install the benchmark extra, pip install -e '.[bench]'")
        bench = Bench(url, subjects, config)
        started = time.monotonic()
        for round_number in range(config.rounds):
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            bench.log(f"round {round_number + 1} of {config.rounds} ({', '.join(order)})")
            bench.enqueue(order)
            for name in order:
                bench.with_workers(name)
        if not options.skip_memory:
            for name in names:
                bench.memory(name)
        meta = machine(url, names, subjects)
        meta["load_average_before"] = [round(v, 2) for v in load_before]
        meta["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        meta["duration_s"] = round(time.monotonic() - started, 1)
        for subject in subjects.values():
            subject.close()
    finally:
        if server is not None:
            server.stop()

    report = build_report(bench, config, names, meta)
    table = format_table(report, names)
    report["table"] = table
    print()
    print(f"{meta['command']}  ({meta['date']}, {meta['duration_s']} s)")
    print(f"Python {meta['python']}, redis-server {meta['redis_server']}, redis-py {meta['redis_py']} "
          f"({meta['redis_parser']} parser), {meta['cpus']} CPUs, load average before "
          f"{meta['load_average_before'][0]}, after {meta['load_average_after'][0]}")  # fmt: skip
    print("versions: " + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()))
    print("'x vs' = times better than that system (rates: ours/theirs; times and sizes: theirs/ours)")
    print()
    print(table)
    for row in report["rows"]:
        for name, ratios in row.get("times_better_per_round", {}).items():
            shown = ", ".join("-" if r is None else f"{r:.2f}x" for r in ratios)
            print(f"  {row['label']}: x vs {name} per round: {shown}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

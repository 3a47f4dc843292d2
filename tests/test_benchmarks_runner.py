"""The benchmark runner (benchmarks/run.py): its report, and a smoke run of
django_actors alone (dramatiq and Celery are the ``bench`` extra, not test
dependencies) on a private redis-server."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import run


def _bench(samples):
    bench = run.Bench.__new__(run.Bench)
    bench.samples = samples
    bench.rss_curves = {}
    return bench


def test_ratios_read_as_times_better_for_rates_and_for_times():
    config = run.QUICK
    bench = _bench({
        "send": {"django_actors": [30_000.0, 10_000.0, 20_000.0], "dramatiq": [10_000.0]},
        "latency": {"django_actors": [1.0] * 98 + [5.0, 9.0], "dramatiq": [4.0] * 100},
        "rss_growth": {"django_actors": [0.2], "dramatiq": [0.0]},
    })  # fmt: skip
    report = run.build_report(bench, config, ["django_actors", "dramatiq"], {})
    rows = {row["key"]: row for row in report["rows"]}
    assert rows["send"]["values"]["django_actors"] == 20_000.0  # the median of the rounds
    assert rows["send"]["times_better"]["dramatiq"] == 2.0 and rows["send"]["met"] is True
    assert rows["latency_p50"]["values"]["django_actors"] == 1.0
    assert rows["latency_p99"]["values"]["django_actors"] == 9.0
    assert rows["latency_p50"]["times_better"]["dramatiq"] == 4.0 and rows["latency_p50"]["met"] is True
    assert rows["rss_growth"]["times_better"] == {"dramatiq": None} and rows["rss_growth"]["met"] is True
    assert rows["drain"]["values"] == {"django_actors": None, "dramatiq": None} and rows["drain"]["met"] is None
    table = run.format_table(report, ["django_actors", "dramatiq"])
    assert "| send() loop, 1,000 msgs" in table and "2.00x" in table and "4.00x" in table


@pytest.mark.redis
@pytest.mark.slow
def test_a_quick_run_of_django_actors_alone(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    output = tmp_path / "quick.json"
    assert run.main(["--quick", "--systems", "django_actors", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    values = {row["key"]: row["values"]["django_actors"] for row in report["rows"]}
    assert all(value is not None for value in values.values()), values
    assert values["send"] > 0 and values["drain"] > 0 and 0 < values["latency_p50"] <= values["latency_p99"]
    assert len(report["rss_curves_mb"]["django_actors"]) == run.QUICK.memory_samples
    assert report["meta"]["versions"]["django_actors"]

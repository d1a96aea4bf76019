"""The worker benchmark still runs: ``bench/cluster_workers.py`` at a tiny size with one and
with two workers, checked by counts (no time or rate is asserted; the figures are for
BENCHMARKS.md)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from bench.cluster_workers import measure, parse_args, report
from tests.pg_cluster import binaries

pytestmark = pytest.mark.e2e


def test_one_and_two_workers_carry_the_room_with_the_audience_balanced() -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (./run test installs it)")
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (./run test installs it)")
    options = "--workers 1,2 --sizes 4 --window 1 --warmup 0.5 --fleet-per-process 1"
    args = parse_args(options.split(" "))
    steps = measure(args, lambda text: None)
    assert [(s.workers, s.error) for s in steps] == [(1, ""), (2, "")]
    for step in steps:
        # Every listener gets the speaker's packets, those on the speaker's worker and those
        # on the other one (through the relay between the workers).
        assert step.loss <= 0.01
        assert step.copies_per_s > 0
        assert math.isfinite(step.server_us_per_copy) and step.server_us_per_copy > 0
        assert step.p50_ms <= step.p99_ms
        assert len(step.worker_cores) == step.workers
    assert steps[0].split == [4]
    # The servers' own count: the placement put two fleet processes on each worker.
    assert steps[1].split == [2, 2]
    assert "2 worker(s): throughput with <0.1% loss" in report(steps, args)

"""bench/store_latency.py still runs: a tiny version on each store, checked by counts (the
figures themselves are for BENCHMARKS.md; nothing here asserts a time or a rate)."""

from __future__ import annotations

import math

import pytest

from bench.store_latency import run_store

pytestmark = pytest.mark.e2e


def test_the_store_benchmark_measures_both_stores(postgres_url: str) -> None:
    for name, url in (("sqlite", None), ("pg", postgres_url)):
        figures = run_store(name, url, sequential=5, pipelined=12, hosts=2)
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] and math.isfinite(figures["p95_ms"])
        assert figures["bans_per_s"] > 0

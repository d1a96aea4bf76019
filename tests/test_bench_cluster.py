"""The media relay benchmark still runs: a tiny ``bench/cluster_relay.py`` run per transport,
checked by counts (no time or rate is asserted; the figures are for BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import pytest

from bench.cluster_relay import measure

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transport", ["udp", "redis"])
def test_a_tiny_relay_run_delivers_every_packet_once(transport: str) -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (./run test installs it)")
    args = argparse.Namespace(
        rooms=2, speakers=1, receivers=2, window=1.0, warmup=0.5, ramp=False, ramp_max=0
    )
    step, ramp = measure(transport, args, lambda text: None)
    assert ramp == []
    # Two receiving nodes get every packet of the window once (loopback at 100 packets/s).
    assert step.duplicates == 0
    assert step.loss <= 0.01
    assert step.deliveries_rate > 1.5 * step.sent_rate > 0
    assert math.isfinite(step.send_us) and step.send_us > 0
    assert math.isfinite(step.receive_us) and step.receive_us > 0
    assert step.p50_ms <= step.p95_ms <= step.p99_ms

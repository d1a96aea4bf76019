"""The optional Prometheus endpoint, scraped over HTTP from an in-process salond."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from salon.client.connection import RequestError
from salon.daemon.metrics import MetricsEndpoint
from tests.conftest import run_daemon


async def scrape(host: str, port: int, path: str = "/metrics") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_endpoint_reports_the_server(tmp_path: Path) -> None:
    overrides = {"metrics.enabled": True, "metrics.port": 0}
    async with run_daemon(tmp_path / "state", **overrides) as live:
        [endpoint] = [c for c in live.daemon.components if isinstance(c, MetricsEndpoint)]
        host, port = endpoint.address
        assert host == "127.0.0.1"  # localhost by default
        status, body = await scrape(host, port)
        assert status == "HTTP/1.1 200 OK"
        before = samples(body)
        assert before[("salon_sessions", ())] == 0
        owner = await live.client("Owner")
        await owner.create_room("Metrics", room="m")
        await owner.join("m")
        listener = await live.client("Lis")
        await listener.join("m")
        with pytest.raises(RequestError):
            await owner.call("raise_hand")  # an owner has no hand to raise: an error reply
        _, body = await scrape(host, port)
        after = samples(body)
        assert after[("salon_sessions", ())] == 2
        assert after[("salon_connections_total", ())] == 2
        assert after[("salon_rooms", (("state", "live"),))] == 1
        assert after[("salon_members", (("place", "stage"),))] == 1
        assert after[("salon_members", (("place", "audience"),))] == 1
        for direction in ("in", "out"):
            key = (("direction", direction),)
            assert after[("salon_udp_packets_total", key)] > 0
            assert after[("salon_udp_bytes_total", key)] > after[("salon_udp_packets_total", key)]
        assert after[("salon_control_messages_total", (("direction", "in"),))] >= 5
        assert sum(v for (name, _), v in after.items() if name == "salon_errors_total") >= 1
        # Every request and hello went through the timed plugin stages.
        assert after[("salon_plugin_seconds_count", (("stage", "authenticate"),))] == 2
        assert after[("salon_plugin_seconds_count", (("stage", "review"),))] >= 4
        status, _ = await scrape(host, port, "/elsewhere")
        assert status == "HTTP/1.1 404 Not Found"


async def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    async with run_daemon(tmp_path / "state") as live:
        assert not any(isinstance(c, MetricsEndpoint) for c in live.daemon.components)

"""Acknowledged moderation on each store: SQLite (the default, the baseline) and PostgreSQL.

A salond process per store, each in a fresh state directory; PostgreSQL is a throw-away cluster
started by this script with production durability (fsync on, synchronous commit), unless
``--postgres-url`` names an empty database to use instead. In this process one host sends
``ban`` requests on its room and times the ``ok`` replies, which salond sends only once the ban
is committed:

- latency: ``--sequential`` bans one after another, each awaited (p50, p95 of request -> ok);
- throughput: ``--pipelined`` bans sent at once by ``--hosts`` hosts of the room (a session's
  requests are handled in order, so the hosts' bans are what is in flight together, and the
  store commits them in groups): bans acknowledged per second, first request to last ``ok``.

    python bench/store_latency.py                 # 300 sequential, 3000 pipelined per store
    python bench/store_latency.py --quick         # 50 and 300
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_description, start_server
from salon.client.connection import SalonClient
from tests.pg_cluster import running_cluster

CONFIG = "[limits]\nmessage_rate = 1000000.0\nmessage_burst = 1000000\n"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def connect(server: Any, name: str) -> SalonClient:
    key = base64.b64encode(hashlib.sha256(f"bench/store/{name}".encode()).digest()).decode()
    return await SalonClient.connect(
        server.host,
        server.port,
        display_name=name,
        fingerprint=server.fingerprint,
        credentials={"guest_key": key},
    )


async def measure(server: Any, sequential: int, pipelined: int, hosts: int) -> dict[str, float]:
    owner = await connect(server, "Owner")
    moderators = [await connect(server, f"Moderator{index}") for index in range(hosts - 1)]
    try:
        await owner.create_room("Bench", room="bench", persistent=True)
        await owner.join("bench")
        for moderator in moderators:
            await moderator.join("bench")
            await owner.call("promote", user=moderator.user)
        for index in range(20):  # warm-up: connections, prepared paths, caches
            await owner.call("ban", user=f"guest-warm{index}")
        latencies = []
        for index in range(sequential):
            started = time.perf_counter()
            await owner.call("ban", user=f"guest-seq{index:06d}", reason="bench")
            latencies.append((time.perf_counter() - started) * 1000)
        # Each session's requests are handled in order, one at a time: the hosts' bans are
        # in flight together, and the store commits them in groups.
        team = [owner, *moderators]
        started = time.perf_counter()
        await asyncio.gather(
            *(
                team[index % len(team)].call("ban", user=f"guest-pipe{index:06d}", reason="b")
                for index in range(pipelined)
            )
        )
        elapsed = time.perf_counter() - started
    finally:
        for client in [owner, *moderators]:
            await client.close()
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 0.95),
        "bans_per_s": pipelined / elapsed,
    }


def run_store(
    name: str, url: str | None, sequential: int, pipelined: int, hosts: int
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"salon-store-{name}-") as tmp:
        config = Path(tmp) / "salond.toml"
        config.write_text(CONFIG + (f'\n[store]\nurl = "{url}"\n' if url else ""))
        server = start_server("salond", Path(tmp) / "state", args=("-c", str(config)))
        try:
            return asyncio.run(measure(server, sequential, pipelined, hosts))
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 sequential, 300 pipelined")
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--pipelined", type=int, default=3000)
    parser.add_argument("--hosts", type=int, default=8, help="sessions banning in parallel")
    parser.add_argument("--postgres-url", help="an empty database (default: a throw-away one)")
    args = parser.parse_args(argv)
    sequential, pipelined = (50, 300) if args.quick else (args.sequential, args.pipelined)
    results: dict[str, dict[str, float]] = {}
    sizes = (sequential, pipelined, args.hosts)
    results["sqlite"] = run_store("sqlite", None, *sizes)
    if args.postgres_url:
        results["postgresql"] = run_store("pg", args.postgres_url, *sizes)
    else:
        with running_cluster(durable=True) as cluster:
            if cluster is None:
                print("PostgreSQL is not installed: only SQLite measured", file=sys.stderr)
            else:
                url = cluster.database()
                results["postgresql"] = run_store("pg", url, *sizes)
    machine = machine_description()
    print(
        f"# {machine.get('cpu', '')} {machine.get('nproc', '')} cores; "
        f"{sequential} sequential, {pipelined} pipelined bans by {args.hosts} hosts per store"
    )
    print("| store | ack p50 ms | ack p95 ms | pipelined bans/s | bans/s vs SQLite |")
    print("|---|---:|---:|---:|---:|")
    base = results["sqlite"]["bans_per_s"]
    for name, figures in results.items():
        print(
            f"| {name} | {figures['p50_ms']:.2f} | {figures['p95_ms']:.2f} "
            f"| {figures['bans_per_s']:,.0f} | {figures['bans_per_s'] / base:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

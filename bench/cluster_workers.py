"""Throughput of one room on salond with one and with two worker processes on this machine.

    python bench/cluster_workers.py            # 1 and 2 workers, 1 -> 200..800 listeners
    python bench/cluster_workers.py --quick    # 1 -> 100, 300; shorter windows
    ./run bench workers [--quick]              # the same through ./run

For each worker count (``--workers``, default 1,2) and each audience size (``--sizes``), a
fresh salond runs as a cluster node (``[cluster] workers = N``: a supervisor and N worker
processes sharing the UDP port with SO_REUSEPORT, the PostgreSQL store and a redis-server that
the bench starts on loopback, the UDP media relay between the workers). One speaker talks in
one room; the listeners are the cheap fleet of ``bench/listener_fleet.py`` (``bench/loadgen.py``,
``--fleet-per-process`` connections per process, one socket each).

The kernel sends every connection of a fleet process to the worker its socket's address hashes
to: the bench balances the audience by having each fleet process open one session first and
keep its socket only if it reached the worker with the fewest listeners (``--placement`` in
``bench/loadgen.py``; the workers' admin sockets say which one it reached).

Measured over the window, as ``bench/scenarios.py`` does for one process:

- copies/s delivered to the listeners, and the loss (copies sent in the window not delivered);
- server CPU per copy: every worker process and the supervisor, from their own accounting
  (``/proc/<pid>/stat``), summed; each worker's share of a core; redis-server's;
- the load generator's CPU per copy (speaker and fleet processes): they share the cores;
- p50/p99 latency of the copies (receive time minus the send time carried in the datagram);
- which side was the limit: a worker's core full, or the machine's cores all busy (then the
  generator's share says how much of it was the bench itself).

The throughput of a worker count is the most copies/s of a size with less than 0.1% loss and
a median latency under 20 ms (above it copies queue: the server is not keeping up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (
    CLOCK_TICKS,
    machine_description,
    now_ns,
    percentile,
    process_cpu_seconds,
    start_server,
)
from bench.scenarios import Child, wait_until_idle
from salon.client.connection import CLIENT_ACK_DELAY
from tests.pg_cluster import running_cluster
from tests.redis_server import running_redis

LOSS_LIMIT = 0.001
"""Loss below which a step counts for the throughput."""
QUEUEING_P50_MS = 20.0
"""A median latency above this is a queue building up: the step does not count either."""
FULL_CORE = 0.9
"""A process using this share of a core is taken as saturated."""
MOST_MOVES = 30
"""Sockets a fleet process may try before it keeps whatever worker it reached."""


@dataclass
class Step:
    workers: int
    listeners: int
    split: list[int] = field(default_factory=list)
    """Listeners on each worker: its client connections, less the speaker's, once joined."""
    copies_per_s: float = 0.0
    loss: float = float("nan")
    server_us_per_copy: float = float("nan")
    """All worker processes and the supervisor, summed."""
    server_cores: float = 0.0
    worker_cores: list[float] = field(default_factory=list)
    redis_cores: float = 0.0
    machine_busy_cores: float = 0.0
    """Every process of the machine, the bench's and any other (from /proc/stat)."""
    generator_us_per_copy: float = float("nan")
    generator_cores: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    limit: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def clean(self) -> bool:
        return not self.error and self.loss < LOSS_LIMIT and self.p50_ms <= QUEUEING_P50_MS


def _admin_sockets(state: Path, workers: int) -> list[Path]:
    """Worker 1 answers on the usual socket, worker n on its own (docs/cluster.md)."""
    return [state / "admin.sock"] + [
        state / "workers" / str(n) / "admin.sock" for n in range(2, workers + 1)
    ]


async def _statuses(sockets: list[Path]) -> list[Any]:
    from salon.daemon.admin.client import AdminClient

    answers = []
    for path in sockets:
        async with await AdminClient.connect(path) as admin:
            answers.append(await admin.status())
    return answers


def statuses(sockets: list[Path], timeout: float = 60.0) -> list[Any]:
    """Every worker's admin ``status`` (waits until each answers: workers start one by one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(_statuses(sockets))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _new_messages(child: Child, key: str, seen: int, timeout: float) -> dict[str, Any]:
    """The next message carrying ``key`` after the first ``seen`` of them."""
    deadline = time.monotonic() + timeout
    with child._arrived:
        while True:
            found = [m for m in child.messages if key in m]
            if len(found) > seen:
                return found[seen]
            if any("error" in m for m in child.messages):
                raise RuntimeError(f"load generator failed: {child.messages[-1]}")
            if time.monotonic() > deadline or child.proc.poll() is not None:
                raise RuntimeError(f"load generator gave no {key!r}: {''.join(child.stderr)}")
            child._arrived.wait(0.5)


def place(child: Child, sockets: list[Path], assigned: list[int]) -> int:
    """Answer a fleet process's probes until its socket reaches the worker with the fewest
    listeners; returns the worker's index."""
    totals = [s.connections_total for s in statuses(sockets)]
    want = assigned.index(min(assigned))
    for attempt in range(MOST_MOVES + 1):
        _new_messages(child, "probe", attempt, 60)
        now = [s.connections_total for s in statuses(sockets)]
        grown = [after - before for before, after in zip(totals, now, strict=True)]
        totals = now
        reached = grown.index(max(grown))
        if reached == want or attempt == MOST_MOVES:
            child.send("stay")
            return reached
        child.send("move")
    raise AssertionError("unreachable")


def run_step(
    workers: int, listeners: int, args: argparse.Namespace, store_url: str, log: Any
) -> Step:
    step = Step(workers, listeners)
    children: list[Child] = []
    deadline = args.warmup + args.window + 600
    with tempfile.TemporaryDirectory(prefix="salon-bench-") as tmp, running_redis() as redis_url:
        state = Path(tmp) / "state"
        secret = Path(tmp) / "cluster.secret"
        secret.write_bytes(os.urandom(48))
        secret.chmod(0o600)
        config = (
            f'[store]\nurl = "{store_url}"\n'
            f'[cluster]\nredis_url = "{redis_url}"\nsecret_file = "{secret}"\n'
            f'node_id = "bench"\nworkers = {workers}\n'
        )
        server = None
        try:
            server = start_server("salond", state, config_text=config, timeout=120)
            sockets = _admin_sockets(state, workers)
            pids = [s.pid for s in statuses(sockets)]
            redis_pid = _redis_pid(redis_url)
            common = ["--port", str(server.port), "--ack-delay", str(args.ack_delay)]
            before = [s.connections_total for s in statuses(sockets)]
            speaker = Child(["speakers", "--count", "1", *common], deadline)
            children.append(speaker)
            speaker.wait_for("ready", 60)
            after = [s.connections_total for s in statuses(sockets)]
            speaker_on = max(range(workers), key=lambda n: after[n] - before[n])
            # As many fleet processes on each worker: a process's listeners all reach one.
            processes = workers * -(-listeners // (workers * args.fleet_per_process))
            per_process = -(-listeners // processes)
            assigned = [0] * workers
            fleets: list[Child] = []
            base = 0
            while base < listeners:
                count = min(per_process, listeners - base)
                extra = ["--placement"] if workers > 1 else []
                child = Child(
                    ["listeners", "--count", str(count), "--base", str(base), *common, *extra],
                    deadline,
                )
                children.append(child)
                fleets.append(child)
                reached = place(child, sockets, assigned) if workers > 1 else 0
                assigned[reached] += count
                child.wait_for("ready", 180)
                base += count
            for pid in pids:
                wait_until_idle(pid)
            # The servers' own count (the probes that moved have closed by now).
            step.split = [s.connections for s in statuses(sockets)]
            step.split[speaker_on] -= 1
            step.notes.append(f"speaker on worker {speaker_on + 1}")
            start = now_ns() + 200_000_000
            window_start = start + int(args.warmup * 1e9)
            window_end = window_start + int(args.window * 1e9)
            end = window_end + 1_000_000_000
            for child in children:
                child.send(f"go {window_start} {window_end} {end}")
            time.sleep(max(0.0, (window_start - now_ns()) / 1e9))
            watched = [*pids, server.pid, redis_pid] + [c.proc.pid for c in children]
            cpu0 = {pid: process_cpu_seconds(pid) for pid in watched}
            busy0 = machine_busy_seconds()
            t0 = now_ns()
            time.sleep(max(0.0, (window_end - now_ns()) / 1e9))
            cpu1 = {pid: process_cpu_seconds(pid) for pid in watched}
            busy1 = machine_busy_seconds()
            elapsed = (now_ns() - t0) / 1e9
            step.machine_busy_cores = (busy1 - busy0) / elapsed
            used = {pid: cpu1[pid] - cpu0[pid] for pid in watched}

            sent = sum(speaker.wait_for("result", 60)["result"]["sent_in_window"])
            latencies: list[int] = []
            delivered = 0
            for child in fleets:
                data = child.wait_for("result", 60)["result"]
                latencies.extend(data["latencies_us"])
                delivered += sum(data["received"])
            latencies.sort()
            if not delivered:
                raise RuntimeError(f"nothing delivered (the speaker sent {sent} in the window)")
            server_cpu = sum(used[pid] for pid in pids) + (
                used[server.pid] if server.pid not in pids else 0.0
            )
            generator_cpu = sum(used[c.proc.pid] for c in children)
            step.copies_per_s = delivered / elapsed
            step.loss = 1 - delivered / max(1, sent * listeners)
            step.server_us_per_copy = server_cpu / max(1, delivered) * 1e6
            step.server_cores = server_cpu / elapsed
            step.worker_cores = [used[pid] / elapsed for pid in pids]
            step.redis_cores = used[redis_pid] / elapsed
            step.generator_us_per_copy = generator_cpu / max(1, delivered) * 1e6
            step.generator_cores = generator_cpu / elapsed
            step.p50_ms = percentile(latencies, 0.50) / 1000
            step.p99_ms = percentile(latencies, 0.99) / 1000
            step.limit = limit(step)
        except Exception as exc:
            step.error = f"{type(exc).__name__}: {exc}"
            if server is not None:
                log(server.log_text()[-3000:])
        finally:
            for child in children:
                child.kill()
            if server is not None:
                server.stop(timeout=15)
    return step


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def limit(step: Step) -> str:
    """Which side held the step back: a worker's core, or every core of the machine (then
    how much of it was the bench's generator, and how much other processes)."""
    busiest = max(step.worker_cores, default=0.0)
    bench = step.server_cores + step.redis_cores + step.generator_cores
    cores = os.cpu_count() or 1
    if busiest >= FULL_CORE:
        return f"a worker's core ({busiest:.0%})"
    if step.machine_busy_cores >= FULL_CORE * cores:
        others = max(0.0, step.machine_busy_cores - bench)
        return (
            f"the machine ({step.machine_busy_cores:.2f} of {cores} cores busy: generator "
            f"{step.generator_cores:.2f}, other processes {others:.2f})"
        )
    if step.p50_ms > QUEUEING_P50_MS:
        return "queueing with cores to spare"
    return "none"


def _redis_pid(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    client.close()
    return pid


def measure(args: argparse.Namespace, log: Any) -> list[Step]:
    steps: list[Step] = []
    with running_cluster() as pg:
        if pg is None:
            raise SystemExit("PostgreSQL is not installed (./run test installs it)")
        for workers in args.workers:
            for size in args.sizes:
                step = run_step(workers, size, args, pg.database(), log)
                steps.append(step)
                log(f"{workers} worker(s), 1 -> {size}: {describe(step)}")
                if step.error or step.loss > args.stop_loss:
                    break  # past the limit: larger audiences only lose more
    return steps


def describe(step: Step) -> str:
    if step.error:
        return f"error {step.error}"
    return (
        f"split {step.split} copies/s {step.copies_per_s:,.0f} loss {step.loss:.3%} "
        f"server {step.server_us_per_copy:.1f} µs/copy ({step.server_cores:.2f} cores: "
        f"{', '.join(f'{c:.2f}' for c in step.worker_cores)}) redis {step.redis_cores:.2f} "
        f"generator {step.generator_us_per_copy:.1f} µs/copy ({step.generator_cores:.2f}) "
        f"machine busy {step.machine_busy_cores:.2f} "
        f"p50 {step.p50_ms:.1f} p99 {step.p99_ms:.1f} ms limit {step.limit}"
    )


def report(steps: list[Step], args: argparse.Namespace) -> str:
    machine = machine_description()
    lines = [
        f"Machine: {machine['nproc']} x {machine['cpu']}; Python {machine['python']}; "
        f"load average {args.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end; 1 speaker, fleet listeners ({args.fleet_per_process} per process); "
        f"window {args.window:g} s.",
        "",
        "| workers | listeners | split | copies/s | loss | server µs/copy | server cores "
        "(per worker) | redis cores | generator µs/copy | generator cores | machine busy cores "
        "| p50 ms | p99 ms | limit |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in steps:
        if s.error:
            lines.append(f"| {s.workers} | {s.listeners} |" + " |" * 11 + f" {s.error} |")
            continue
        per_worker = "/".join(f"{c:.2f}" for c in s.worker_cores)
        lines.append(
            f"| {s.workers} | {s.listeners} | {'/'.join(map(str, s.split))} "
            f"| {s.copies_per_s:,.0f} | {s.loss:.2%} | {s.server_us_per_copy:.1f} "
            f"| {s.server_cores:.2f} ({per_worker}) | {s.redis_cores:.2f} "
            f"| {s.generator_us_per_copy:.1f} | {s.generator_cores:.2f} "
            f"| {s.machine_busy_cores:.2f} | {s.p50_ms:.1f} "
            f"| {s.p99_ms:.1f} | {s.limit} |"
        )
    lines.append("")
    for workers in args.workers:
        clean = [s for s in steps if s.workers == workers and s.clean()]
        best = max(clean, key=lambda s: s.copies_per_s) if clean else None
        lines.append(
            f"- {workers} worker(s): throughput with <{LOSS_LIMIT:.1%} loss and p50 <= "
            f"{QUEUEING_P50_MS:g} ms: "
            + (
                f"{best.copies_per_s:,.0f} copies/s (1 -> {best.listeners}, "
                f"{best.server_us_per_copy:.1f} µs/copy, p99 {best.p99_ms:.1f} ms)"
                if best
                else "none of the sizes run"
            )
        )
    return "\n".join(lines)


def parse_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=parse_list, default=[1, 2])
    parser.add_argument("--sizes", type=parse_list, help="listener counts (default 200..800)")
    parser.add_argument("--window", type=float, help="measured seconds (default 6)")
    parser.add_argument("--warmup", type=float, help="seconds before the window (default 2)")
    parser.add_argument("--fleet-per-process", type=int, default=100)
    parser.add_argument("--ack-delay", type=float, default=CLIENT_ACK_DELAY)
    parser.add_argument(
        "--stop-loss",
        type=float,
        default=0.05,
        help="a worker count's larger sizes are skipped once a step loses more than this",
    )
    parser.add_argument("--quick", action="store_true", help="1 -> 100, 300; 3 s windows")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([100, 300] if args.quick else [200, 400, 600, 800])
    args.window = args.window or (3.0 if args.quick else 6.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    args.load_at_start = os.getloadavg()[0]
    return args


def main() -> None:
    args = parse_args()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    steps = measure(args, log)
    print(report(steps, args))
    if args.json:
        print(json.dumps([asdict(s) for s in steps], indent=1))


if __name__ == "__main__":
    main()

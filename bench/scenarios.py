"""One benchmark run: a server process, speaker and listener processes, and the figures.

``run_scenario`` starts the server (salond or the naive forwarder), a speaker process and
listener processes (``--per-process`` connections each, on their own event loop), lets the
speakers talk through a warm-up and a measurement window, and reads:

- the server's CPU time over the window from its own accounting (``/proc/<pid>/stat``),
  divided by the copies delivered in the window: CPU microseconds per forwarded copy;
- the latency of every copy (receive time minus the send time carried in the payload);
- the loss (copies expected minus copies delivered);
- for a stalled listener (a listener process stopped with SIGSTOP before the window), the
  server's memory growth over the window.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    REPO,
    ServerProcess,
    now_ns,
    percentile,
    process_cpu_seconds,
    process_rss_kib,
    start_server,
    udp_receive_buffer_errors,
)
from salon.client.connection import CLIENT_ACK_DELAY

SERVER_TUNING: dict[str, dict[str, bool | int | str]] = {
    "salond": {},
    "salond-nofast": {"fast_path": False},
    "salond-asyncio": {"event_loop": "asyncio"},
    "salond-nogc": {"gc_freeze": False, "gc_threshold": 0},
    "salond-nobatch": {"read_batch": 1},
    "salond-sendto": {"send_batch": "sendto"},
    "salond-nohold": {"media_flush_interval": 0.0},
    "salond-owntimers": {"shared_timers": False},
    "salond-read5": {"read_interval": 0.005},
    "salond-nolink": {"media_link": False},
    "naive": {},
}
"""Servers to compare: salond with one ``[tuning]`` measure turned off, or on where it is off
by default (``salond-read5``), see conf/salond.toml."""


@dataclass
class Scenario:
    name: str
    speakers: int = 1
    listeners: int = 50
    stalled: bool = False
    warmup: float = 3.0
    window: float = 10.0
    per_process: int = 50
    ack_delay: float = CLIENT_ACK_DELAY
    generator: str = "fleet"
    """The listeners: "fleet" (``bench/listener_fleet.py``) or "full" (a bench client each)."""


@dataclass
class Result:
    scenario: str
    server: str
    speakers: int
    listeners: int
    cpu_us_per_copy: float = float("nan")
    copies_per_s: float = 0.0
    server_cpu_share: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p999_ms: float = float("nan")
    loss: float = float("nan")
    """Share of the copies due to the listeners that did not arrive in the window."""
    speaker_loss: float = float("nan")
    """Share of the copies due to the speakers (the others' packets) that did not arrive."""
    rss_growth_kib: int = 0
    loadgen_max_cpu_share: float = 0.0
    loadgen_us_per_copy: float = float("nan")
    """CPU of every load generator process (speakers and listeners) per copy: next to the
    server's, it says which side was the limit."""
    speaker_us_per_copy: float = float("nan")
    """The speakers' process's share of ``loadgen_us_per_copy`` (the rest is the listeners')."""
    packets_per_copy: float = float("nan")
    """UDP packets the listeners received from the server per copy (probes and ACKs count)."""
    acks_per_copy: float = float("nan")
    """UDP packets the listeners sent to the server (their ACKs) per copy."""
    acks_per_packet: float = float("nan")
    """UDP packets the listeners sent per UDP packet they received: how often they ACK."""
    generator: str = ""
    rcvbuf_errors: int = 0
    """UDP packets the kernel dropped on full receive buffers (any socket) during the window."""
    error: str = ""
    worst_ms_by_half_second: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Child:
    """A load generator process driven over stdin/stdout (see ``bench/loadgen.py``)."""

    def __init__(self, args: list[str], deadline: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "loadgen.py"), *args, "--deadline", str(deadline)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.messages: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError), self._arrived:
                self.messages.append(json.loads(line))
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.stderr) < 50:
                self.stderr.append(line)

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in self.messages:
                    if key in message:
                        return message
                    if "error" in message:
                        raise RuntimeError(f"load generator failed: {message['error']}")
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self.messages):
                    raise RuntimeError(
                        f"load generator gave no {key!r}: {''.join(self.stderr)[-2000:]}"
                    )
                self._arrived.wait(min(remaining, 0.5))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(5)


def wait_until_idle(pid: int, share: float = 0.05, timeout: float = 120.0) -> float:
    """Wait until the process uses less than ``share`` of a core over half a second.

    Joins make the server send every member a notice about every other member, which takes a
    while to drain for hundreds of listeners; the measurement starts once that is over.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while time.monotonic() < deadline:
        before = process_cpu_seconds(pid)
        time.sleep(0.5)
        if process_cpu_seconds(pid) - before < share * 0.5:
            break
    return time.monotonic() - started


PIN_CPUS = True
"""During the measured window, the server on one CPU and the load generators on the others
(``--no-pin`` in ``bench/run_all.py`` turns it off). On a small machine a generator woken by
the server's packets on the server's CPU preempts it: salond at 1->200 was switched out about
2,400 times a second, and the switches were charged to it (BENCHMARKS.md, "Pinned")."""


def pin(pid: int, cpus: set[int]) -> bool:
    """Every thread of process ``pid`` onto ``cpus``; False where the system cannot."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), cpus)
    except (OSError, AttributeError, ValueError):
        return False
    return True


def pin_window(server_pid: int, generator_pids: list[int]) -> str:
    """Pin for the measured window (see :data:`PIN_CPUS`); what was done, for the notes."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return "not pinned: no CPU affinity here"
    if not PIN_CPUS:
        return "not pinned (--no-pin)"
    if len(available) < 2:
        return "not pinned: one CPU"
    ok = pin(server_pid, {available[0]})
    for pid in generator_pids:
        ok = pin(pid, set(available[1:])) and ok
    if not ok:
        return "pinning failed"
    rest = ", ".join(map(str, available[1:]))
    return f"pinned: server on CPU {available[0]}, load generators on CPU {rest}"


def run_scenario(
    scenario: Scenario, server_kind: str, log: Any = None, profile: Path | None = None
) -> Result:
    """Run ``scenario`` against a fresh server of ``server_kind``; never leaves a process."""
    result = Result(scenario.name, server_kind, scenario.speakers, scenario.listeners)
    result.generator = scenario.generator
    children: list[Child] = []
    server: ServerProcess | None = None
    total_time = scenario.warmup + scenario.window + 300
    with tempfile.TemporaryDirectory(prefix="salon-bench-") as tmp:
        try:
            server = start_server(server_kind, Path(tmp) / "state", SERVER_TUNING[server_kind])
            common = [
                "--kind",
                server_kind,
                "--port",
                str(server.port),
                "--ack-delay",
                str(scenario.ack_delay),
            ]
            generator = ["--generator", scenario.generator]
            speakers = Child(["speakers", "--count", str(scenario.speakers), *common], total_time)
            children.append(speakers)
            speakers.wait_for("ready", 60)
            listeners: list[Child] = []
            remaining = scenario.listeners
            base = 0
            while remaining > 0:
                count = min(scenario.per_process, remaining)
                child = Child(
                    ["listeners", "--count", str(count), "--base", str(base), *common, *generator],
                    total_time,
                )
                listeners.append(child)
                children.append(child)
                remaining -= count
                base += count
                # One process joins at a time: every join makes the server send a notice to
                # every member, and a storm of hundreds of them at once would delay hellos
                # past the server's hello timeout.
                child.wait_for("ready", 180)
            stalled: Child | None = None
            if scenario.stalled:
                stalled = Child(
                    ["listeners", "--count", "1", "--name", "stalled", *common, *generator],
                    total_time,
                )
                children.append(stalled)
                stalled.wait_for("ready", 60)

            result.notes.append(pin_window(server.pid, [c.proc.pid for c in children]))
            settle = wait_until_idle(server.pid)
            result.notes.append(f"server settled {settle:.1f} s after the joins")
            start = now_ns() + 200_000_000
            window_start = start + int(scenario.warmup * 1e9)
            window_end = window_start + int(scenario.window * 1e9)
            end = window_end + 1_000_000_000
            for child in children:
                child.send(f"go {window_start} {window_end} {end}")
            # The speakers start sending at once; the window opens after the warm-up.
            if stalled is not None:
                time.sleep(max(0.0, (window_start - now_ns()) / 1e9 - scenario.warmup / 2))
                os.kill(stalled.proc.pid, signal.SIGSTOP)
            time.sleep(max(0.0, (window_start - now_ns()) / 1e9))
            cpu0 = process_cpu_seconds(server.pid)
            drops0 = udp_receive_buffer_errors()
            rss0 = process_rss_kib(server.pid)
            load0 = {c.proc.pid: process_cpu_seconds(c.proc.pid) for c in children}
            t0 = now_ns()
            profiler = None
            if profile is not None:
                profiler = subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "--pid",
                        str(server.pid),
                        "--duration",
                        str(max(1, int(scenario.window) - 1)),
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--rate",
                        "200",
                        "--output",
                        str(profile),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            time.sleep(max(0.0, (window_end - now_ns()) / 1e9))
            cpu1 = process_cpu_seconds(server.pid)
            result.rcvbuf_errors = udp_receive_buffer_errors() - drops0
            rss1 = process_rss_kib(server.pid)
            load1 = {c.proc.pid: process_cpu_seconds(c.proc.pid) for c in children}
            elapsed = (now_ns() - t0) / 1e9
            if profiler is not None:
                try:
                    profiler.wait(30)
                except subprocess.TimeoutExpired:
                    profiler.kill()
            if stalled is not None:
                stalled.kill()
                children.remove(stalled)

            speaker_result = speakers.wait_for("result", 60)["result"]
            latencies: list[int] = []
            worst: dict[int, int] = {}
            delivered = 0
            packets_in = packets_out = 0
            fleet: dict[str, int] = {}
            for child in listeners:
                data = child.wait_for("result", 60)["result"]
                for key, value in data.get("fleet", {}).items():
                    fleet[key] = fleet.get(key, 0) + value
                packets_in += data["packets_in"]
                packets_out += data["packets_out"]
                latencies.extend(data["latencies_us"])
                for bucket, value in data["worst_us"]:
                    worst[bucket] = max(worst.get(bucket, 0), value)
                delivered += sum(data["received"])
            sent = speaker_result["sent_in_window"]
            members = scenario.listeners + scenario.speakers
            expected_listeners = sum(sent) * scenario.listeners
            # Copies to the speakers themselves (a conference) are counted by the speakers'
            # process (their latency is not recorded); they count for the CPU per copy.
            expected = sum(sent) * (members - 1)
            speaker_copies = sum(speaker_result["received_in_window"])
            expected_speakers = sum(sent) * (scenario.speakers - 1)
            copies = delivered + speaker_copies
            latencies.sort()
            cpu = cpu1 - cpu0
            result.cpu_us_per_copy = cpu / max(1, copies) * 1e6
            result.copies_per_s = copies / elapsed
            result.server_cpu_share = cpu / elapsed
            result.p50_ms = percentile(latencies, 0.50) / 1000
            result.p99_ms = percentile(latencies, 0.99) / 1000
            result.p999_ms = percentile(latencies, 0.999) / 1000
            result.loss = 1 - delivered / max(1, expected_listeners)
            result.speaker_loss = 1 - speaker_copies / max(1, expected_speakers)
            result.rss_growth_kib = rss1 - rss0
            result.packets_per_copy = packets_in / max(1, delivered)
            result.acks_per_copy = packets_out / max(1, delivered)
            result.acks_per_packet = packets_out / max(1, packets_in)
            if fleet:
                result.notes.append(
                    "listener fleet: " + ", ".join(f"{k} {v}" for k, v in sorted(fleet.items()))
                )
            result.worst_ms_by_half_second = [worst[b] / 1000 for b in sorted(worst)]
            result.loadgen_max_cpu_share = max(
                (load1[pid] - load0[pid]) / elapsed for pid in load1 if pid in load0
            )
            speaker_pid = speakers.proc.pid
            if speaker_pid in load0 and speaker_pid in load1:
                result.speaker_us_per_copy = (
                    (load1[speaker_pid] - load0[speaker_pid]) / max(1, copies) * 1e6
                )
            result.loadgen_us_per_copy = (
                sum(load1[pid] - load0[pid] for pid in load1 if pid in load0) / max(1, copies) * 1e6
            )
            if expected:
                result.notes.append(
                    f"copies expected {expected}, delivered {copies}"
                    f" (to speakers: {speaker_copies} of {expected_speakers}, measured)"
                )
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            if server is not None and log is not None:
                log(server.log_text()[-3000:])
        finally:
            for child in children:
                child.kill()
            if server is not None:
                server.stop()
                tail = [line for line in server.lines if "max datagram backlog" in line]
                result.notes.extend(line.strip() for line in tail)
    return result

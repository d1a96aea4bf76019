"""The benchmarks still run: tiny versions of ``bench/run_all.py``'s runs, checked by counts.

Nothing here asserts a time or a rate (the machine may be busy); the figures themselves are
for ``./run bench`` and BENCHMARKS.md.
"""

from __future__ import annotations

import math

import pytest

from bench.run_all import (
    NAIVE,
    comparison_plan,
    comparison_table,
    parse_args,
    plan,
    stalled_summary,
    table,
)
from bench.scenarios import Result, Scenario, run_scenario

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("server", ["salond", NAIVE])
def test_a_tiny_broadcast_forwards_every_copy(server: str) -> None:
    scenario = Scenario("smoke", listeners=3, warmup=0.5, window=1.0, per_process=2)
    result = run_scenario(scenario, server)
    assert result.error == "", result.error
    assert result.copies_per_s > 0
    assert math.isfinite(result.cpu_us_per_copy) and result.cpu_us_per_copy > 0
    # Loopback at smoke size loses nothing; one copy in a hundred is the most a busy machine
    # may cost (a forwarder that skips a listener loses a third).
    assert result.loss <= 0.01, result.notes
    # The generator's own CPU per copy, next to the server's.
    assert math.isfinite(result.loadgen_us_per_copy) and result.loadgen_us_per_copy > 0
    assert math.isfinite(result.p50_ms) and result.p50_ms <= result.p99_ms <= result.p999_ms


def test_a_tiny_conference_counts_copies_to_speakers() -> None:
    scenario = Scenario("smoke", speakers=2, listeners=2, warmup=0.5, window=1.0)
    result = run_scenario(scenario, "salond")
    assert result.error == "", result.error
    # Each speaker's packets go to the 2 listeners and to the other speaker; the copies to the
    # speakers are counted where they arrive (the speakers' process), not assumed.
    assert result.loss <= 0.01, result.notes
    assert result.speaker_loss <= 0.01, result.notes
    note = next(note for note in result.notes if note.startswith("copies expected"))
    assert "measured" in note


def test_the_mouth_to_ear_bench_hears_the_speaker() -> None:
    pytest.importorskip("opuslib")
    from bench.mouth_to_ear import run, summary_lines

    result = run(2.0)
    assert result["media_packets_per_s"] > 0
    assert result["up_bytes_per_s"] > 0 and result["media_bytes_per_s"] > 0
    assert result["down_bytes_per_s"] > 0
    # Bursts start after a second of talk: a two-second run captures at least two, and the
    # listener must hear them (all but possibly the last, still in flight when it stops).
    assert result["bursts"] >= 2
    assert result["bursts"] - 1 <= result["heard"] <= result["bursts"]
    assert len(summary_lines(result)) == 2


def test_the_plan_and_the_table() -> None:
    args = parse_args(["--quick"])
    names = [scenario.name for scenario in plan(args)]
    assert names[0] == "broadcast 1->50" and any(name.startswith("stalled") for name in names)
    rows = []
    for scenario in ("broadcast 1->50", "stalled 1->50+1"):
        for server, cost, p99 in (("salond", 20.0, 5.0), (NAIVE, 100.0, 40.0)):
            result = Result(scenario, server, 1, 50, cpu_us_per_copy=cost, p99_ms=p99, loss=0.0)
            if scenario.startswith("stalled"):
                result.p99_ms += 1.0
            rows.append((result, 1.0))
    lines = table(rows, ["salond", NAIVE])
    assert lines[0].startswith("| scenario | server |")
    salond_row = next(line for line in lines if "| broadcast 1->50 | salond |" in line)
    assert "| 0.20 |" in salond_row
    full = [scenario.name for scenario in plan(parse_args([]))]
    assert "broadcast 1->800" in full and "conference 4x200" in full
    # The main runs use the cheap listener fleet; the comparison runs each size with both.
    assert {scenario.generator for scenario in plan(args)} == {"fleet"}
    compared = [(s.name, s.generator) for s in comparison_plan(args)]
    assert compared == [("broadcast 1->20", "fleet"), ("broadcast 1->20", "full")]
    # Every row says which side spent more CPU per copy.
    rows[0][0].loadgen_us_per_copy = 10.0
    assert "| server (gen/srv 0.50) |" in table(rows, ["salond", NAIVE])[2]
    assert len(comparison_table(rows)) == 2 + len(rows)
    summary = stalled_summary(rows)
    assert len(summary) == 2 and "+1.0 ms" in summary[0]


def test_the_send_batch_bench_runs() -> None:
    from bench.sendbatch import main
    from salon.quic.sendbatch import sendmmsg_available

    assert main(["--batch", "4", "--rounds", "2", "--repeat", "1"]) == (
        0 if sendmmsg_available() else 1
    )


def test_the_core_bench_reaches_every_listener() -> None:
    from bench.core import media, requests

    # media() asserts that its first datagram reached every listener before timing.
    assert math.isfinite(media(3, 20, bare=False)) and media(3, 20, bare=True) >= 0
    assert requests(3, 20) >= 0


def test_the_micro_benchmarks_run() -> None:
    from bench.micro import fast_send, gc_pause, receive_loop, sendto

    [line] = receive_loop(rate=1000, seconds=0.5, rounds=1)
    assert "asyncio's reader" in line and "batch reader" in line and "nan" not in line
    [line] = gc_pause(connections=4)
    assert "4 aioquic connections" in line
    [line] = sendto(count=500, rounds=1)
    assert "asyncio transport" in line
    send, record = fast_send(sends=200, rounds=1)
    assert "fast send of one datagram" in send and "template" in record


def test_the_redundancy_cost_bench_counts_copies_only_for_the_lossy_listener() -> None:
    from bench.redundancy_cost import encode
    from tests.test_reliability_support import tone_frames

    frames = list(tone_frames(seconds=1.0))
    plain, red = encode(frames, 0), encode(frames, 2)
    assert plain.redundancy_datagrams == 0 and red.datagrams == plain.datagrams
    # The separate flow carries the copies RED carries, in datagrams of their own (one fewer
    # than the packets: the first has nothing to repeat), each with its own RTP header and tag.
    assert red.redundancy_datagrams == plain.datagrams - 1
    copies = red.datagram_bytes - plain.datagram_bytes
    headers = (red.redundancy_bytes - copies) / red.redundancy_datagrams
    assert 15 < headers < 40, headers


def test_the_sansio_bench_runs_every_configuration() -> None:
    from bench.sansio import CONFIGURATIONS, run, summary_lines

    results = run(copies=100)
    assert len(results) == len(CONFIGURATIONS)
    assert all(math.isfinite(r["send_us"]) and r["send_us"] > 0 for r in results)
    assert len(summary_lines(results)) == 2 + len(CONFIGURATIONS)


def test_the_sansio_flush_table_runs_on_salonds_transmit() -> None:
    # It broke once when connections' timers moved to a per-loop heap bound to a closed loop.
    from bench.sansio import measure_flush

    one = measure_flush(listeners=3, speakers=1, ticks=20)
    packed = measure_flush(listeners=3, speakers=4, ticks=20, flushes=1)
    assert one["send_us"] > 0 and packed["send_us"] > 0


def test_the_window_pins_the_server_and_the_generators_apart(monkeypatch):
    """Two real processes (with a thread each) pinned to disjoint CPUs, every thread."""
    import os
    import subprocess
    import sys
    import time

    from bench import scenarios

    cpus = sorted(os.sched_getaffinity(0))
    code = (
        "import threading, time;"
        " threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    try:
        # Each thread started before the pinning (a thread started later inherits it).
        for _ in range(500):
            if all(len(os.listdir(f"/proc/{p.pid}/task")) >= 2 for p in procs):
                break
            time.sleep(0.01)
        monkeypatch.setattr(scenarios, "PIN_CPUS", False)
        assert scenarios.pin_window(procs[0].pid, [procs[1].pid]).startswith("not pinned")
        monkeypatch.setattr(scenarios, "PIN_CPUS", True)
        note = scenarios.pin_window(procs[0].pid, [procs[1].pid])
        if len(cpus) < 2:
            assert note == "not pinned: one CPU"
            return
        assert note.startswith("pinned: server on CPU")

        def affinities(pid: int) -> set[frozenset[int]]:
            tasks = os.listdir(f"/proc/{pid}/task")
            return {frozenset(os.sched_getaffinity(int(task))) for task in tasks}

        assert affinities(procs[0].pid) == {frozenset({cpus[0]})}
        assert affinities(procs[1].pid) == {frozenset(cpus[1:])}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()

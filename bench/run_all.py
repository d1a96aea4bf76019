"""Every load benchmark in one invocation: salond against the naive aioquic forwarder.

Scenarios (each one run against salond and against ``bench/naive_forwarder.py``, one after the
other, on a fresh server process each time):

- broadcast: 1 speaker -> N listeners, N in ``--sizes`` (default 50, 100, 200, 400, 800);
- conference: ``--conference-speakers`` speakers and ``--conference-listeners`` listeners;
- stalled: the broadcast at ``--stalled-size`` plus one listener process stopped (SIGSTOP)
  for the whole window; compared with the plain broadcast of the same size;
- mouth-to-ear (``bench/mouth_to_ear.py``): real clients (Opus, SRTP, jitter buffer) through
  salond, capture to playout, and the bytes on the wire per speaker per second.

Every figure of a load run comes from ``bench/scenarios.py``: server CPU time from the server
process's own accounting divided by the copies delivered in the window, latency from the send
time carried in each datagram, loss from the copies expected. The listeners are the cheap
fleet of ``bench/listener_fleet.py`` (``--fleet-per-process`` connections per process, one
socket and one loop each), whose CPU per copy is printed next to the server's in every row
(the "limit" column names the side that spent more); ``--generator full`` runs them as full
bench clients instead (``--per-process`` each). The generator comparison (``--compare-sizes``)
runs salond with both kinds of listeners, one after the other in the same run: the same
loss, latency and ACK packets per received packet show the fleet loads the server as the full
clients do. At the end markdown tables are printed, ready to paste into BENCHMARKS.md.

    python bench/run_all.py            # the full run (about 10-14 minutes)
    python bench/run_all.py --quick    # a smaller, shorter run (about 2-3 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import scenarios as scenarios_module
from bench.common import machine_description
from bench.scenarios import SERVER_TUNING, Result, Scenario, run_scenario
from salon.client.connection import CLIENT_ACK_DELAY

NAIVE = "naive"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def parse_sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short windows")
    parser.add_argument("--sizes", type=parse_sizes, help="broadcast listener counts")
    parser.add_argument("--warmup", type=float, help="seconds of traffic before the window")
    parser.add_argument("--window", type=float, help="seconds measured per run")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave the server and the load generators on any CPU (default: pinned apart)",
    )
    parser.add_argument("--conference-speakers", type=int)
    parser.add_argument("--conference-listeners", type=int)
    parser.add_argument("--stalled-size", type=int)
    parser.add_argument(
        "--ack-delay",
        type=float,
        default=CLIENT_ACK_DELAY,
        help="the listeners' ACK delay in seconds (default: the reference client's)",
    )
    parser.add_argument(
        "--per-process", type=int, default=50, help="full clients' connections per process"
    )
    parser.add_argument(
        "--fleet-per-process",
        type=int,
        default=400,
        help="fleet connections per process (one process wakes once for a whole tick)",
    )
    parser.add_argument(
        "--generator",
        choices=["fleet", "full"],
        default="fleet",
        help="the listeners of the main runs: the cheap fleet or full bench clients",
    )
    parser.add_argument(
        "--compare-sizes",
        type=parse_sizes,
        help="broadcast sizes run on salond with both generators (empty: none)",
    )
    parser.add_argument(
        "--servers",
        default=f"salond,{NAIVE}",
        help=f"servers to compare, from {', '.join(SERVER_TUNING)} (default salond,naive)",
    )
    parser.add_argument(
        "--only",
        default="sansio,broadcast,conference,stalled,generators,m2e",
        help="what to run: sansio, broadcast, conference, stalled, generators, m2e",
    )
    parser.add_argument("--m2e-seconds", type=float, help="length of the mouth-to-ear run")
    parser.add_argument(
        "--aioquic-generator",
        action="store_true",
        help="full bench clients receive through aioquic's receive_datagram (no fast path)",
    )
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args(argv)
    if args.aioquic_generator:
        os.environ["BENCH_FAST_RECEIVE"] = "0"  # read by bench/common.py in each process
    quick = args.quick
    defaults: dict[str, Any] = {
        "sizes": [50, 200] if quick else [50, 100, 200, 400, 800],
        "warmup": 1.5 if quick else 2.0,
        "window": 3.0 if quick else 8.0,
        "conference_speakers": 3 if quick else 4,
        "conference_listeners": 30 if quick else 200,
        "stalled_size": 50 if quick else 100,
        "compare_sizes": [20] if quick else [20, 200],
        "m2e_seconds": 6.0 if quick else 15.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.servers = [name for name in args.servers.split(",") if name]
    for name in args.servers:
        if name not in SERVER_TUNING:
            parser.error(f"unknown server {name!r}")
    args.only = set(args.only.split(","))
    return args


def per_process(args: argparse.Namespace, generator: str) -> int:
    return int(args.fleet_per_process if generator == "fleet" else args.per_process)


def plan(args: argparse.Namespace) -> list[Scenario]:
    common = {
        "warmup": args.warmup,
        "window": args.window,
        "per_process": per_process(args, args.generator),
        "ack_delay": args.ack_delay,
        "generator": args.generator,
    }
    scenarios: list[Scenario] = []
    sizes = list(args.sizes)
    if "stalled" in args.only and args.stalled_size not in sizes:
        # The stalled run is compared with the plain broadcast of the same size.
        sizes.append(args.stalled_size)
    if "broadcast" in args.only or "stalled" in args.only:
        for size in sorted(sizes):
            scenarios.append(Scenario(f"broadcast 1->{size}", listeners=size, **common))
    if "conference" in args.only:
        k, n = args.conference_speakers, args.conference_listeners
        scenarios.append(Scenario(f"conference {k}x{n}", speakers=k, listeners=n, **common))
    if "stalled" in args.only:
        scenarios.append(
            Scenario(
                f"stalled 1->{args.stalled_size}+1",
                listeners=args.stalled_size,
                stalled=True,
                **common,
            )
        )
    return scenarios


def comparison_plan(args: argparse.Namespace) -> list[Scenario]:
    """The same broadcasts with the fleet and with full clients (salond only)."""
    if "generators" not in args.only:
        return []
    return [
        Scenario(
            f"broadcast 1->{size}",
            listeners=size,
            warmup=args.warmup,
            window=args.window,
            per_process=per_process(args, generator),
            ack_delay=args.ack_delay,
            generator=generator,
        )
        for size in args.compare_sizes
        for generator in ("fleet", "full")
    ]


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_loss(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 100:.2f}%"


def table(results: list[tuple[Result, float]], servers: list[str]) -> list[str]:
    """The markdown table: one row per scenario and server; ratio on the non-naive rows."""
    naive = {r.scenario: r for r, _ in results if r.server == NAIVE}
    lines = [
        "| scenario | server | copies/s | CPU µs/copy | vs naive | generator µs/copy | limit"
        " | p50 ms | p99 ms | p99.9 ms | loss | server CPU | load |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result, load in results:
        if result.error:
            lines.append(
                f"| {result.scenario} | {result.server} | failed: {result.error[:60]} |" + " |" * 10
            )
            continue
        base = naive.get(result.scenario)
        ratio = "-"
        if result.server != NAIVE and base is not None and not base.error:
            ratio = f"{result.cpu_us_per_copy / base.cpu_us_per_copy:.2f}"
        lines.append(
            f"| {result.scenario} | {result.server} | {result.copies_per_s:,.0f}"
            f" | {fmt(result.cpu_us_per_copy)} | {ratio} | {fmt(result.loadgen_us_per_copy)}"
            f" | {limit(result)} | {fmt(result.p50_ms)}"
            f" | {fmt(result.p99_ms)} | {fmt(result.p999_ms)} | {fmt_loss(result.loss)}"
            f" | {result.server_cpu_share * 100:.0f}% | {load:.1f} |"
        )
    return lines


def limit(result: Result) -> str:
    """Which side spent more CPU per copy: on a machine both share, that side saturates it."""
    if math.isnan(result.cpu_us_per_copy) or math.isnan(result.loadgen_us_per_copy):
        return "-"
    ratio = result.loadgen_us_per_copy / max(result.cpu_us_per_copy, 1e-9)
    side = "generator" if ratio > 1 else "server"
    return f"{side} (gen/srv {ratio:.2f})"


def comparison_table(results: list[tuple[Result, float]]) -> list[str]:
    """The fleet and the full clients on the same broadcasts: what the server sees."""
    lines = [
        "| scenario | listeners | server µs/copy | generator µs/copy | ACK pkts per pkt in"
        " | pkts in per copy | p50 ms | p99 ms | loss | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, load in results:
        if result.error:
            lines.append(f"| {result.scenario} | {result.generator} | failed: {result.error[:60]}")
            continue
        lines.append(
            f"| {result.scenario} | {result.generator} | {fmt(result.cpu_us_per_copy)}"
            f" | {fmt(result.loadgen_us_per_copy)} | {fmt(result.acks_per_packet, 3)}"
            f" | {fmt(result.packets_per_copy, 3)} | {fmt(result.p50_ms)} | {fmt(result.p99_ms)}"
            f" | {fmt_loss(result.loss)} | {load:.1f} |"
        )
    return lines


def run_one(scenario: Scenario, server: str, results: list[tuple[Result, float]]) -> None:
    load = load_average()
    log(f"-- {scenario.name} on {server}, {scenario.generator} listeners (load {load:.2f})")
    result = run_scenario(scenario, server, log=log)
    results.append((result, load))
    if result.error:
        log(f"   failed: {result.error}")
        return
    log(
        f"   {result.cpu_us_per_copy:.1f} µs/copy, {result.copies_per_s:,.0f}"
        f" copies/s, p50/p99/p99.9 {fmt(result.p50_ms)}/{fmt(result.p99_ms)}/"
        f"{fmt(result.p999_ms)} ms, loss {fmt_loss(result.loss)},"
        f" load generator {fmt(result.loadgen_us_per_copy)} µs/copy in all"
        f" (speakers {fmt(result.speaker_us_per_copy)}),"
        f" max {result.loadgen_max_cpu_share * 100:.0f}% of a core per process,"
        f" per copy {result.packets_per_copy:.2f} packets in and"
        f" {result.acks_per_copy:.2f} ACK packets out at the listeners"
        f" ({result.acks_per_packet:.3f} per packet in);"
        f" {result.rcvbuf_errors} UDP packets dropped on full socket buffers"
    )
    for note in result.notes:
        if note.startswith("listener fleet"):
            log(f"   {note}")


def stalled_summary(results: list[tuple[Result, float]]) -> list[str]:
    """For each server: the stalled run's p99 against the plain broadcast of the same size."""
    lines = []
    by_key = {(r.scenario, r.server): r for r, _ in results}
    for result, _ in results:
        if not result.scenario.startswith("stalled") or result.error:
            continue
        plain = by_key.get((f"broadcast 1->{result.listeners}", result.server))
        if plain is None or plain.error:
            continue
        backlog = [note for note in result.notes if "backlog" in note]
        lines.append(
            f"- stalled listener, {result.server}: others' p99 {fmt(result.p99_ms)} ms"
            f" vs {fmt(plain.p99_ms)} ms without it"
            f" ({result.p99_ms - plain.p99_ms:+.1f} ms), loss {fmt_loss(result.loss)},"
            f" server memory {result.rss_growth_kib:+d} KiB over the window"
            + (f", {backlog[0]}" if backlog else "")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios_module.PIN_CPUS = not args.no_pin
    started = time.monotonic()
    machine = machine_description()
    log(
        f"machine: {machine['nproc']} x {machine['cpu']}, Python {machine['python']},"
        f" aioquic {machine['aioquic']}, uvloop {'yes' if machine['uvloop'] else 'no'};"
        f" load average {load_average():.2f}"
    )
    sansio: list[dict[str, Any]] = []
    if "sansio" in args.only:
        from bench.sansio import run as run_sansio

        log(f"-- sans-I/O cost per copy (load {load_average():.2f})")
        sansio = run_sansio(2000 if args.quick else 5000)
    results: list[tuple[Result, float]] = []
    for scenario in plan(args):
        for server in args.servers:
            run_one(scenario, server, results)
    compared: list[tuple[Result, float]] = []
    for scenario in comparison_plan(args):
        run_one(scenario, "salond", compared)
    m2e: dict[str, Any] | None = None
    if "m2e" in args.only:
        from bench.mouth_to_ear import run as run_mouth_to_ear

        log(f"-- mouth-to-ear on salond ({args.m2e_seconds:.0f} s, load {load_average():.2f})")
        try:
            m2e = run_mouth_to_ear(args.m2e_seconds)
        except Exception as exc:
            m2e = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"   {m2e}")
    elapsed = time.monotonic() - started

    out = [
        "",
        f"Machine: {machine['nproc']} x {machine['cpu']}; Python {machine['python']};"
        f" aioquic {machine['aioquic']}; uvloop {'yes' if machine['uvloop'] else 'no'}."
        f" Window {args.window:.0f} s after {args.warmup:.0f} s of warm-up;"
        f" load = 1-minute load average when the run started; {elapsed:.0f} s in all.",
        "",
        *table(results, args.servers),
        "",
    ]
    if compared:
        out += [
            "The same broadcasts on salond with both load generators (the fleet of"
            " bench/listener_fleet.py, and a full bench client per listener):",
            "",
            *comparison_table(compared),
            "",
        ]
    if sansio:
        from bench.sansio import summary_lines as sansio_lines

        out += [
            "Sans-I/O CPU per copy (no sockets, one process; see bench/sansio.py):",
            "",
            *sansio_lines(sansio),
            "",
        ]
    stalled = stalled_summary(results)
    if stalled:
        out += [*stalled, ""]
    if m2e is not None:
        if "error" in m2e:
            out += [f"- mouth-to-ear: failed: {m2e['error']}", ""]
        else:
            from bench.mouth_to_ear import summary_lines

            out += [*summary_lines(m2e), ""]
    print("\n".join(out), flush=True)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "results": [dict(r.as_dict(), load=load) for r, load in results],
                    "generators": [dict(r.as_dict(), load=load) for r, load in compared],
                    "mouth_to_ear": m2e,
                },
                indent=2,
            )
        )
    failed = [r for r, _ in results + compared if r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

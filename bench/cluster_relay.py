"""The media relay between nodes, both transports in one run: Redis pub/sub pipelined per tick
(``RedisMediaRelay``) and node-to-node UDP with Redis for interest only (``UdpMediaRelay``).

    python bench/cluster_relay.py            # speaker rates, then a ramp until loss (~3 min)
    python bench/cluster_relay.py --quick    # shorter windows, a shorter ramp (~1 min)
    ./run bench cluster [--quick]            # the same through ./run

One sending node and ``--receivers`` receiving nodes, each its own process with its own event
loop, share a redis-server the bench starts on a free loopback port. The sender plays
``--rooms`` x ``--speakers`` speakers at 50 packets/s each (118-byte datagrams: a 32 kbit/s
Opus frame with its RTP header and SRTP tag, as in bench/common.py); every receiver follows
every room. Measured over a window after a warm-up:

- CPU µs per relayed packet, from each process's own CPU time (``time.process_time`` in the
  nodes, ``/proc/<pid>/stat`` for redis-server), which holds up on a shared, busy machine:
  *send* per packet published, net of the generator's own cost (the same generator with no
  relay, measured first in the same run); *receive* per packet delivered to one node;
  *redis* per packet published;
- the added latency of the relay hop: delivery in the receiving node minus the moment the
  sending node was handed the packet (``CLOCK_MONOTONIC``, shared by the processes);
- loss (packets sent in the window not delivered by the end of the drain) and duplicates;
- when the late packets (over 5 ms) were sent, per tenth of a second of the window (on
  standard error): bursts at a regular interval point at periodic work on the path;
- the UDP relay's periodic interest work (refresh and re-read of the rooms a receiving node
  follows, one period): how long it holds the event loop and its CPU, against the per-room
  pipeline it replaced, measured first in the same run;
- a ramp: rooms of ``--speakers`` speakers added, the total rate doubled step by step, until
  more than 1% is lost, the sender cannot keep the rate or the median latency passes 20 ms (a
  queue building up); the last clean step is the throughput until loss.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_description, media_datagram, percentile, process_cpu_seconds
from bench.common import read_media as read_bench_fields
from tests.redis_server import running_redis

PACKETS_PER_SPEAKER = 50
GENERATOR_TICK = 0.002
LOSS_LIMIT = 0.01
SATURATED_P50_MS = 20.0
SECRET = b"bench-cluster-secret-0123456789abcdef"
LATE_NS = 5_000_000


# ------------------------------------------------------------------------------- node process


class NullRelay:
    """The generator's baseline: a relay that only counts."""

    def __init__(self) -> None:
        self.published = 0

    def publish(self, room: str, datagram: bytes) -> None:
        self.published += 1

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def node_main(role: str, transport: str, url: str, rooms: int, conn: Any) -> None:
    from salon.daemon.config import TuningConfig
    from salon.daemon.tuning import install_event_loop_policy

    install_event_loop_policy(TuningConfig())  # the loop salond would run
    asyncio.run(_node(role, transport, url, rooms, conn))


async def _node(role: str, transport: str, url: str, rooms: int, conn: Any) -> None:
    from redis.asyncio import Redis

    from salon.daemon.cluster.bus import BusCodec
    from salon.daemon.cluster.relay import make_media_relay

    loop = asyncio.get_running_loop()
    arrivals: list[tuple[int, int, int, int]] = []  # speaker, seq, sent_ns, received_ns

    def on_media(room: str, datagram: bytes) -> None:
        speaker, seq, sent_ns = read_bench_fields(datagram)
        arrivals.append((speaker, seq, sent_ns, time.monotonic_ns()))

    redis = Redis.from_url(url)
    codec = BusCodec(SECRET, f"{role}-{os.getpid()}", replay_window_ms=5000)
    relay: Any
    if transport == "none":
        relay = NullRelay()
    else:
        name, _, tick = transport.partition("@")
        relay = make_media_relay(
            name,
            redis,
            codec,
            on_media,
            queue_limit=65536,
            tick_ms=int(tick) if tick else None,
        )
    await relay.start()
    if role.startswith("receiver"):
        for index in range(rooms):
            await relay.follow(f"room{index}")
    from salon.daemon.config import TuningConfig
    from salon.daemon.tuning import tune_garbage_collector

    tune_garbage_collector(TuningConfig())  # as salond does once started
    pauses: list[int] = []  # the cyclic collector's pauses, ns (they stop the event loop)
    collecting = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.monotonic_ns()
        else:
            pauses.append(time.monotonic_ns() - collecting[0])

    gc.callbacks.append(on_gc)
    marks: list[tuple[int, float, int]] = []  # monotonic_ns, process CPU s, generated
    generated = [0]
    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    conn.send(("ready",))
    generator: asyncio.Task[int] | None = None
    while True:
        command = await commands.get()
        if command[0] == "mark":
            marks.append((time.monotonic_ns(), time.process_time(), generated[0]))
            if len(marks) == 1:
                pauses.clear()
        elif command[0] == "run":
            arrivals.clear()
            marks.clear()
            generated[0] = 0
            generator = asyncio.create_task(
                _generate(relay, command[1], command[2], command[3], generated)
            )
        elif command[0] == "report":
            sent = await generator if generator is not None else 0
            counters = _counters(relay)
            if pauses:
                counters["gc_max_us"] = max(pauses) // 1000
            conn.send(("report", marks, sent, arrivals if role != "sender" else [], counters))
        elif command[0] == "clear":
            arrivals.clear()
            marks.clear()
        elif command[0] == "stop":
            break
    loop.remove_reader(conn.fileno())
    await relay.stop()
    await redis.aclose()
    conn.send(("stopped",))


def _counters(relay: Any) -> dict[str, int]:
    """The relay's drop and refusal counters (what a node would export as metrics)."""
    names = ("no_interest", "send_errors", "unwanted", "misrouted", "oversized")
    counts = {name: getattr(relay, name) for name in names if getattr(relay, name, 0)}
    outbound = getattr(relay, "outbound", None)
    if outbound is not None and outbound.dropped:
        counts["queue_dropped"] = outbound.dropped
    codec = getattr(relay, "_codec", None)
    if codec is not None:
        counts.update({f"refused_{k.value}": v for k, v in codec.refused.items() if v})
    return counts


async def _generate(
    relay: Any, speakers: int, seconds: float, rooms: int, generated: list[int]
) -> int:
    """Speakers at 50 packets/s each, spread evenly over time, round-robin over the rooms."""
    rate = speakers * PACKETS_PER_SPEAKER
    seqs = [0] * speakers
    sent = 0
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        due = int((now - start) * rate) - sent
        for _ in range(due):
            speaker = sent % speakers
            seq = seqs[speaker]
            seqs[speaker] = seq + 1
            datagram = media_datagram(1, 0x1000 + speaker, speaker, seq, time.monotonic_ns())
            relay.publish(f"room{speaker % rooms}", datagram)
            sent += 1
            generated[0] = sent
        await asyncio.sleep(GENERATOR_TICK)
    return sent


# -------------------------------------------------------------------------------------- floor


def udp_floor(destinations: int = 8, packets: int = 20000) -> dict[str, float]:
    """The UDP relay's CPU per packet without the event loop's wake-ups, in one process: what a
    node already busy with traffic pays at the margin (bench/sansio.py's idea for the relay).

    *encode*: sign one packet into a message; *sendto*: one system call to one node (loopback,
    the receiving sockets unread: the kernel drops on full buffers, the sender's cost is the
    same); *receive*: check and unpack one message and hand its packet on."""
    import socket

    from salon.daemon.cluster.bus import BusCodec, Kind, media_batch_body
    from salon.daemon.cluster.udp_relay import UdpMediaRelay

    sender = BusCodec(SECRET, "floor-a", replay_window_ms=600_000)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(destinations)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))
    targets = [sink.getsockname() for sink in sinks]
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram = media_datagram(1, 0x1000, 0, 0, 0)
    now = int(time.time() * 1000)
    start = time.process_time()
    messages = [
        sender.encode(Kind.MEDIA_BATCH, media_batch_body("room0", [datagram]), now)
        for _ in range(packets)
    ]
    encode = (time.process_time() - start) / packets
    start = time.process_time()
    for index in range(packets // destinations):
        message = messages[index]
        for target in targets:
            out.sendto(message, target)
    sendto = (time.process_time() - start) / (packets // destinations * destinations)
    got: list[bytes] = []
    from redis.asyncio import Redis

    receiver = UdpMediaRelay(
        Redis(),  # never connects: receive() needs no Redis
        BusCodec(SECRET, "floor-b", replay_window_ms=600_000),
        lambda room, data: got.append(data),
        queue_limit=16,
    )
    receiver.rooms.add("room0")
    start = time.process_time()
    for message in messages:
        receiver.receive(message)
    receive = (time.process_time() - start) / packets
    for sock in [*sinks, out]:
        sock.close()
    assert len(got) == packets
    return {"encode_us": encode * 1e6, "sendto_us": sendto * 1e6, "receive_us": receive * 1e6}


# ------------------------------------------------------------------------ periodic interest


async def _refresh_stalls(url: str, rooms: int, rounds: int = 5) -> dict[str, float]:
    """How long the UDP relay's periodic interest work holds the event loop, against the way
    it was first written (a redis-py pipeline of two commands per followed room and one per
    re-read room): the longest loop stall and the CPU of one period, medians of ``rounds``."""
    from redis.asyncio import Redis

    from salon.daemon.cluster.bus import BusCodec
    from salon.daemon.cluster.udp_relay import INTEREST_KEY, UdpMediaRelay

    redis = Redis.from_url(url)
    relay = UdpMediaRelay(
        redis, BusCodec(SECRET, "stalls", replay_window_ms=5000), lambda r, d: None, queue_limit=16
    )
    await relay.start()
    names = [f"stall{index}" for index in range(rooms)]
    for name in names:
        await relay.follow(name)
    await relay._lookup(*names)  # the rooms it relays for: re-read every period too
    stalls: list[float] = []

    async def probe() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0)
            stalls.append(time.perf_counter() - before)

    async def pipelined() -> None:
        expiry = int(time.time() * 1000) + 3000
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zadd(INTEREST_KEY + name, {relay.address: expiry})
                pipe.pexpire(INTEREST_KEY + name, 3000)
            await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(INTEREST_KEY + name, 0, "+inf")
            await pipe.execute()

    figures: dict[str, float] = {}
    for label, work in (("script", relay.refresh), ("pipeline", pipelined)):
        worst, cpu = [], []
        for _ in range(rounds):
            stalls.clear()
            task = asyncio.create_task(probe())
            await asyncio.sleep(0)
            started = time.process_time()
            await work()
            cpu.append(time.process_time() - started)
            task.cancel()
            worst.append(max(stalls))
        figures[f"{label}_stall_ms"] = sorted(worst)[rounds // 2] * 1000
        figures[f"{label}_cpu_ms"] = sorted(cpu)[rounds // 2] * 1000
    await relay.stop()
    await redis.aclose()
    return figures


def refresh_stalls(rooms: int) -> dict[str, float]:
    with running_redis() as url:
        return asyncio.run(_refresh_stalls(url, rooms))


# --------------------------------------------------------------------------------- controller


@dataclass
class Step:
    transport: str
    speakers: int
    target_rate: int
    sent_rate: float
    deliveries_rate: float
    send_us: float
    receive_us: float
    redis_us: float
    send_cpu: float
    receive_cpu: float
    redis_cpu: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    loss: float
    duplicates: int
    late: str = ""
    """Packets later than LATE_NS by when they were sent (tenths of a second into the window):
    bursts at a regular interval point at periodic work on the path."""
    drops: str = ""
    """Relay counters that were not zero (queue drops, refusals, send errors), all nodes, and
    each node's longest garbage-collector pause from the window's start (gc_max_us)."""

    def clean(self) -> bool:
        """Kept up: at most 1% lost, the rate held, and no queue building up (p50 under
        SATURATED_P50_MS: on a shared machine p99 alone jumps with the neighbours' load)."""
        return (
            self.loss <= LOSS_LIMIT
            and self.sent_rate >= 0.9 * self.target_rate
            and self.p50_ms <= SATURATED_P50_MS
        )


class Nodes:
    """A sender and receivers of one transport, as processes."""

    def __init__(self, transport: str, url: str, rooms: int, receivers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.processes: list[Any] = []
        roles = ["sender"] + (
            [] if transport == "none" else [f"receiver{i}" for i in range(receivers)]
        )
        for role in roles:
            parent, child = context.Pipe()
            process = context.Process(
                target=node_main, args=(role, transport, url, rooms, child), daemon=True
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(60):
                raise RuntimeError(f"a {transport} node did not start")
            pipe.recv()

    def send_all(self, *command: Any) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    def reports(self) -> list[tuple[Any, ...]]:
        self.send_all("report")
        return [pipe.recv() for pipe in self.pipes]

    def stop(self) -> None:
        self.send_all("stop")
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            if pipe.poll(10):
                pipe.recv()
            process.join(10)
            if process.is_alive():
                process.kill()


async def wait_for_interest(url: str, transport: str, rooms: int, receivers: int) -> None:
    from redis.asyncio import Redis

    from salon.daemon.cluster.relay import MEDIA_CHANNEL
    from salon.daemon.cluster.udp_relay import INTEREST_KEY

    redis = Redis.from_url(url)
    deadline = time.monotonic() + 30
    for index in range(rooms):
        while True:
            if transport.startswith("redis"):
                count = (await redis.pubsub_numsub(MEDIA_CHANNEL + f"room{index}"))[0][1]
            else:
                count = await redis.zcard(INTEREST_KEY + f"room{index}")
            if count >= receivers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{transport}: receivers never followed room{index}")
            await asyncio.sleep(0.05)
    await redis.aclose()


def run_step(
    nodes: Nodes,
    transport: str,
    redis_pid: int,
    speakers: int,
    rooms: int,
    warmup: float,
    window: float,
) -> Step:
    drain = 1.0
    nodes.pipes[0].send(("run", speakers, warmup + window + 0.2, rooms))
    for pipe in nodes.pipes[1:]:
        pipe.send(("clear",))
    time.sleep(warmup)
    redis_before = process_cpu_seconds(redis_pid)
    nodes.send_all("mark")
    time.sleep(window)
    nodes.send_all("mark")
    redis_cpu = process_cpu_seconds(redis_pid) - redis_before
    time.sleep(0.2 + drain)
    reports = nodes.reports()
    (s0_ns, s0_cpu, s0_pub), (s1_ns, s1_cpu, s1_pub) = reports[0][1]
    elapsed = (s1_ns - s0_ns) / 1e9
    published = s1_pub - s0_pub
    latencies: list[int] = []
    late_at: list[float] = []  # when, in seconds into the window, each late packet was sent
    receive_cpu = 0.0
    delivered = 0
    duplicates = 0
    for report in reports[1:]:
        (_, r0_cpu, _), (_, r1_cpu, _) = report[1]
        receive_cpu += r1_cpu - r0_cpu
        seen: set[tuple[int, int]] = set()
        for speaker, seq, sent_ns, received_ns in report[3]:
            if s0_ns <= sent_ns < s1_ns:
                if (speaker, seq) in seen:
                    duplicates += 1
                    continue
                seen.add((speaker, seq))
                latencies.append(received_ns - sent_ns)
                if received_ns - sent_ns > LATE_NS:
                    late_at.append((sent_ns - s0_ns) / 1e9)
        delivered += len(seen)
    receivers = len(reports) - 1
    expected = published * receivers
    latencies.sort()
    send_cpu = s1_cpu - s0_cpu

    def per(cpu: float, count: int) -> float:
        return cpu / count * 1e6 if count else float("nan")

    return Step(
        transport=transport,
        speakers=speakers,
        target_rate=speakers * PACKETS_PER_SPEAKER,
        sent_rate=published / elapsed,
        deliveries_rate=delivered / elapsed,
        send_us=per(send_cpu, published),
        receive_us=per(receive_cpu, delivered),
        redis_us=per(redis_cpu, published),
        send_cpu=send_cpu / elapsed,
        receive_cpu=receive_cpu / elapsed / max(receivers, 1),
        redis_cpu=redis_cpu / elapsed,
        p50_ms=percentile(latencies, 0.50) / 1e6,
        p95_ms=percentile(latencies, 0.95) / 1e6,
        p99_ms=percentile(latencies, 0.99) / 1e6,
        loss=1 - delivered / expected if expected else float("nan"),
        duplicates=duplicates,
        late=_late_bursts(late_at),
        drops=" ".join(
            f"{role}:{name}={value}"
            for role, report in zip(["sender"] + ["receiver"] * receivers, reports, strict=True)
            for name, value in report[4].items()
        ),
    )


def measure(transport: str, args: argparse.Namespace, log: Any) -> tuple[Step, list[Step]]:
    with running_redis() as url:
        redis_pid = _redis_pid(url)
        # The ramp adds rooms of --speakers speakers: per-room batches stay as small as in a
        # real room (more speakers in the same rooms would batch more and flatter the cost).
        most_rooms = max(args.rooms, args.ramp_max // PACKETS_PER_SPEAKER // args.speakers)
        nodes = Nodes(transport, url, most_rooms, args.receivers)
        try:
            if transport != "none":
                asyncio.run(wait_for_interest(url, transport, most_rooms, args.receivers))
            speakers = args.rooms * args.speakers
            step = run_step(
                nodes, transport, redis_pid, speakers, args.rooms, args.warmup, args.window
            )
            log(f"{transport}: speaker rates {_describe(step)}")
            ramp: list[Step] = []
            if transport != "none" and args.ramp:
                rate = args.ramp_start
                while rate <= args.ramp_max:
                    ramp_speakers = rate // PACKETS_PER_SPEAKER
                    ramp_step = run_step(
                        nodes,
                        transport,
                        redis_pid,
                        ramp_speakers,
                        max(1, ramp_speakers // args.speakers),
                        args.warmup / 2,
                        args.ramp_window,
                    )
                    ramp.append(ramp_step)
                    log(f"{transport}: ramp {rate} pkt/s {_describe(ramp_step)}")
                    if not ramp_step.clean():
                        break
                    rate *= 2
            return step, ramp
        finally:
            nodes.stop()


def _redis_pid(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    client.close()
    return pid


def _late_bursts(late_at: list[float]) -> str:
    """``t:count`` per tenth of a second with late packets, e.g. ``1.0:12 2.0:9``."""
    tenths: dict[float, int] = {}
    for moment in late_at:
        tenth = round(moment, 1)
        tenths[tenth] = tenths.get(tenth, 0) + 1
    return " ".join(f"{t:.1f}:{n}" for t, n in sorted(tenths.items()))


def _describe(step: Step) -> str:
    return (
        f"sent {step.sent_rate:,.0f}/s delivered {step.deliveries_rate:,.0f}/s "
        f"send {step.send_us:.1f} µs recv {step.receive_us:.1f} µs redis {step.redis_us:.1f} µs "
        f"p50 {step.p50_ms:.2f} p99 {step.p99_ms:.2f} ms loss {step.loss:.2%} {step.drops}"
        + (
            f"\n  over {LATE_NS / 1e6:g} ms late, by when sent (s into the window: count): "
            f"{step.late}"
            if step.late
            else ""
        )
    )


def report(
    baseline: Step, results: dict[str, tuple[Step, list[Step]]], args: argparse.Namespace
) -> str:
    load = os.getloadavg()[0]
    machine = machine_description()
    lines = [
        f"Machine: {machine['nproc']} x {machine['cpu']}; Python {machine['python']}; "
        f"load average {args.load_at_start:.1f} at the start, {load:.1f} at the end; "
        f"{args.rooms} rooms x {args.speakers} speakers at {PACKETS_PER_SPEAKER} pkt/s, "
        f"{args.receivers} receiving nodes following every room; window {args.window:g} s.",
        "",
        f"Generator baseline (no relay): {baseline.send_us:.1f} µs per packet, subtracted "
        "from *send*.",
        "",
        "| transport | pkt/s sent | deliveries/s | send µs/pkt | receive µs/pkt | redis µs/pkt "
        "| total µs/pkt | p50 ms | p95 ms | p99 ms | loss | dup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for transport, (step, _) in results.items():
        send = step.send_us - baseline.send_us
        receivers = args.receivers
        total = send + step.receive_us * receivers + step.redis_us
        lines.append(
            f"| {transport} | {step.sent_rate:,.0f} | {step.deliveries_rate:,.0f} | {send:.1f} "
            f"| {step.receive_us:.1f} | {step.redis_us:.1f} | {total:.1f} | {step.p50_ms:.2f} "
            f"| {step.p95_ms:.2f} | {step.p99_ms:.2f} | {step.loss:.2%} | {step.duplicates} |"
        )
    lines.append("")
    lines.append(
        "*total* = send + receive x receiving nodes + redis: CPU of the whole cluster per "
        "packet relayed to every receiving node."
    )
    if args.ramp:
        lines += [
            "",
            f"Ramp (rooms of {args.speakers} speakers added, the rate doubled, until more than "
            f"1% is lost, the sender falls behind or p50 exceeds {SATURATED_P50_MS:g} ms):",
            "",
            "| transport | target pkt/s | sent pkt/s | deliveries/s | sender CPU | receiver CPU "
            "| redis CPU | send µs/pkt * | receive µs/pkt | redis µs/pkt | p50 ms | p99 ms "
            "| loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for transport, (_, ramp) in results.items():
            for step in ramp:
                lines.append(
                    f"| {transport} | {step.target_rate:,} | {step.sent_rate:,.0f} "
                    f"| {step.deliveries_rate:,.0f} | {step.send_cpu:.0%} | {step.receive_cpu:.0%} "
                    f"| {step.redis_cpu:.0%} | {step.send_us:.1f} | {step.receive_us:.1f} "
                    f"| {step.redis_us:.1f} | {step.p50_ms:.1f} | {step.p99_ms:.1f} "
                    f"| {step.loss:.2%} |"
                )
        lines.append("")
        lines.append(
            "\\* the sender's CPU per packet here includes the generator's own (not subtracted: "
            "its baseline was measured at speaker rates only)."
        )
        lines.append("")
        for transport, (_, ramp) in results.items():
            clean = [s for s in ramp if s.clean()]
            best = f"{clean[-1].sent_rate:,.0f} pkt/s sent" if clean else "none"
            lines.append(f"- {transport}: throughput until loss: {best} (last clean step)")
    if "udp" in results and "redis" in results:
        udp, redis_step = results["udp"][0], results["redis"][0]

        def total(step: Step) -> float:
            return (
                step.send_us - baseline.send_us + step.receive_us * args.receivers + step.redis_us
            )

        ratio = total(udp) / total(redis_step)
        lines.append(
            f"- udp vs redis at speaker rates: total CPU per relayed packet "
            f"{total(udp):.1f} vs {total(redis_step):.1f} µs (ratio {ratio:.2f}); "
            f"p99 {udp.p99_ms:.2f} vs {redis_step.p99_ms:.2f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--speakers", type=int, default=2, help="speakers per room")
    parser.add_argument("--receivers", type=int, default=2, help="receiving nodes")
    parser.add_argument("--window", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--transports", default="udp,redis")
    parser.add_argument("--no-ramp", dest="ramp", action="store_false")
    parser.add_argument("--ramp-start", type=int, default=2000, help="first ramp rate, pkt/s")
    parser.add_argument("--ramp-max", type=int, default=64000)
    parser.add_argument("--ramp-window", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="3 s windows, ramp from 4000")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.window, args.warmup, args.ramp_window, args.ramp_start = 3.0, 1.0, 2.0, 4000
    args.load_at_start = os.getloadavg()[0]

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    floor = udp_floor()
    log(f"udp floor: {floor}")
    most_rooms = max(args.rooms, args.ramp_max // PACKETS_PER_SPEAKER // args.speakers)
    stalls = refresh_stalls(most_rooms)
    log(f"interest refresh of {most_rooms} rooms: {stalls}")
    baseline, _ = measure("none", argparse.Namespace(**{**vars(args), "ramp": False}), log)
    results = {name: measure(name, args, log) for name in args.transports.split(",")}
    print(report(baseline, results, args))
    print(
        f"- udp floor (one process, no event loop wake-ups): sign one packet "
        f"{floor['encode_us']:.1f} µs, sendto one node {floor['sendto_us']:.1f} µs, check and "
        f"deliver one {floor['receive_us']:.1f} µs"
    )
    print(
        f"- udp relay's periodic interest work for the {most_rooms} rooms each receiving node "
        f"follows (refresh and re-read, one period): one script call each, loop held "
        f"{stalls['script_stall_ms']:.1f} ms, {stalls['script_cpu_ms']:.1f} ms CPU; as a "
        f"pipeline of a command per room (the first version, baseline) "
        f"{stalls['pipeline_stall_ms']:.1f} ms, {stalls['pipeline_cpu_ms']:.1f} ms CPU"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "baseline": asdict(baseline),
                    "udp_floor": floor,
                    "interest_refresh": stalls,
                    **{
                        name: {"speaker_rates": asdict(step), "ramp": [asdict(s) for s in ramp]}
                        for name, (step, ramp) in results.items()
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

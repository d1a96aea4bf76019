"""Load generator processes of the benchmarks: speakers and listeners on their own event loop.

The orchestrator (``bench/scenarios.py``) starts them and talks to them over stdin/stdout, one
JSON object per line:

1. the process connects its sessions, joins the room and prints ``{"ready": ...}``;
2. the orchestrator writes ``go A B END`` (CLOCK_MONOTONIC nanoseconds): speakers send from
   then until ``B``; listeners record every datagram sent in the window ``[A, B)``;
3. at ``END`` the process prints ``{"result": ...}`` and exits.

Listeners are the cheap fleet of ``bench/listener_fleet.py`` (``--generator fleet``: one socket
and one loop for all of a process's connections once they joined) or full bench clients
(``--generator full``: aioquic and an asyncio transport per connection throughout).

Every process also exits on its own after ``--deadline`` seconds, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
from array import array
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (
    SEND_TIME_OFFSET,
    BenchSession,
    install_fast_loop,
    media_datagram,
    now_ns,
    open_session,
    process_cpu_seconds,
    read_media,
)
from bench.listener_fleet import Fleet, SharedEndpoint
from salon.client.connection import CLIENT_ACK_DELAY
from salon.daemon.wire import messages as msg

FRAME_NS = 20_000_000
FLEET_RECEIVE_BUFFER = 8 << 20


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_go() -> tuple[int, int, int]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    parts = line.split()
    if len(parts) != 4 or parts[0] != "go":
        raise SystemExit(f"loadgen: expected 'go A B END', got {line!r}")
    return int(parts[1]), int(parts[2]), int(parts[3])


async def sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - now_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


# ---------------------------------------------------------------------------------- speakers


def own_key(user: str) -> Any:
    def match(event: Any) -> Any:
        if isinstance(event, msg.RoomState):
            return any(key.user == user for key in event.room.media_keys)
        return isinstance(event, msg.MediaKeyEvent) and event.key.user == user

    return match


def key_of(event: Any, user: str) -> msg.MediaKey:
    if isinstance(event, msg.MediaKeyEvent):
        return event.key
    return next(key for key in event.room.media_keys if key.user == user)


async def run_speakers(args: argparse.Namespace) -> None:
    sessions: list[BenchSession] = []
    flows: list[tuple[int, int]] = []
    received = [0] * args.count
    # Copies of the other speakers' packets sent in the window (a conference delivers them to
    # every speaker): measured here, like the listeners', not assumed by the orchestrator.
    received_in_window = [0] * args.count
    window = [0, 0]
    for index in range(args.count):
        session = await open_session(args.host, args.port, "speaker", index, args.ack_delay)
        sessions.append(session)

        def count(data: bytes, index: int = index) -> None:
            received[index] += 1
            if window[0] <= read_media(data)[2] < window[1]:
                received_in_window[index] += 1

        session.protocol.on_media = count
    if args.kind.startswith("naive"):
        for index, session in enumerate(sessions):
            await session.protocol.call("join", room=args.room)
            flows.append((index + 1, 0x5A000000 + index))
    else:
        owner = sessions[0].protocol
        await owner.call("create_room", title="bench", room=args.room, max_speakers=args.count + 1)
        await owner.call("join", room=args.room)
        token = None
        if args.count > 1:
            invite = await owner.call("create_invite", role="speaker", max_uses=args.count - 1)
            token = invite["invite"]["token"]
        for session in sessions[1:]:
            await session.protocol.call("join", room=args.room, invite=token)
        for session in sessions:
            protocol = session.protocol
            event = await protocol.wait_event(own_key(protocol.user))
            key = key_of(event, protocol.user)
            await protocol.call("unmute")
            flows.append((key.flow_id, key.ssrc))
    emit({"ready": True, "pid": os.getpid(), "flows": flows})
    start, window_end, end = await read_go()
    window[0], window[1] = start, window_end

    sent_in_window = [0] * args.count
    sent_total = 0
    protocols = [session.protocol for session in sessions]
    # Speakers are independent: spread their 20 ms phases evenly.
    due = [start + index * FRAME_NS // args.count for index in range(args.count)]
    seqs = [0] * args.count
    while True:
        index = min(range(args.count), key=due.__getitem__)
        await sleep_until(due[index])
        sent = now_ns()
        if sent >= window_end + FRAME_NS:
            break
        flow_id, ssrc = flows[index]
        protocols[index].send_media(media_datagram(flow_id, ssrc, index, seqs[index], sent))
        seqs[index] += 1
        sent_total += 1
        if start <= sent < window_end:
            sent_in_window[index] += 1
        due[index] += FRAME_NS
        # A speaker that fell far behind skips ahead instead of bursting.
        if sent - due[index] > 10 * FRAME_NS:
            due[index] = sent + FRAME_NS
    await sleep_until(end)
    emit(
        {
            "result": {
                "sent_in_window": sent_in_window,
                "sent_total": sent_total,
                "received": received,
                "received_in_window": received_in_window,
                "cpu": process_cpu_seconds(os.getpid()),
            }
        }
    )


# ---------------------------------------------------------------------------------- listeners


async def run_listeners(args: argparse.Namespace) -> None:
    if args.generator == "fleet":
        await run_fleet(args)
        return
    latencies = array("I")
    # Per 500 ms of send time: the worst latency (for looking at how latency evolves).
    worst: dict[int, int] = {}
    received = [0] * args.count
    window = [0, 0]
    gate = asyncio.Semaphore(8)
    sessions: list[BenchSession] = []

    async def connect(index: int) -> None:
        async with gate:
            session = await open_session(
                args.host, args.port, args.name, args.base + index, args.ack_delay
            )
            await session.protocol.call("join", room=args.room)
        sessions.append(session)

        def record(data: bytes) -> None:
            sent = read_media(data)[2]
            if window[0] <= sent < window[1]:
                latency = (now_ns() - sent) // 1000
                latencies.append(latency)
                received[index] += 1
                bucket = (sent - window[0]) // 500_000_000
                if latency > worst.get(bucket, 0):
                    worst[bucket] = latency

        session.protocol.on_media = record

    await asyncio.gather(*(connect(index) for index in range(args.count)))
    emit({"ready": True, "pid": os.getpid()})
    window[0], window[1], end = await read_go()
    protocols = [session.protocol for session in sessions]
    await sleep_until(window[0])
    for protocol in protocols:
        protocol.counting = True
    await sleep_until(window[1])
    for protocol in protocols:
        protocol.counting = False
    await sleep_until(end)
    emit(
        {
            "result": {
                "received": received,
                "latencies_us": latencies.tolist(),
                "worst_us": sorted(worst.items()),
                "packets_in": sum(protocol.packets_in for protocol in protocols),
                "packets_out": sum(protocol.packets_out for protocol in protocols),
                "cpu": process_cpu_seconds(os.getpid()),
            }
        }
    )


async def fleet_socket(host: str) -> tuple[SharedEndpoint, socket.socket]:
    """The one socket of a fleet process, with a receive buffer for every listener's copies."""
    endpoint = SharedEndpoint()
    await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: endpoint, local_addr=(host, 0)
    )
    assert endpoint.transport is not None
    sock: socket.socket = endpoint.transport.get_extra_info("socket")
    # One socket takes every listener's burst of copies at once.
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, FLEET_RECEIVE_BUFFER)
                break
    return endpoint, sock


async def run_fleet(args: argparse.Namespace) -> None:
    """Listeners of the cheap generator (``bench/listener_fleet.py``): set up with the bench
    client on one shared socket, then served by the fleet's loop from the ``go`` on."""
    loop = asyncio.get_running_loop()
    endpoint, sock = await fleet_socket(args.host)
    gate = asyncio.Semaphore(8)
    sessions: list[BenchSession] = []
    if args.placement:
        # Worker processes share the server's port and the kernel picks one per source
        # address (SO_REUSEPORT): a first session says which worker this socket reaches, and
        # the orchestrator keeps the socket ("stay") or has it replaced ("move").
        while True:
            probe = await open_session(
                args.host, args.port, args.name, args.base, args.ack_delay, endpoint
            )
            emit({"probe": os.getpid()})
            answer = await loop.run_in_executor(None, sys.stdin.readline)
            if answer.strip() == "stay":
                await probe.protocol.call("join", room=args.room)
                sessions.append(probe)
                break
            probe.protocol.close()  # CONNECTION_CLOSE: the server forgets it at once
            await asyncio.sleep(0.05)
            assert endpoint.transport is not None
            endpoint.transport.close()
            endpoint, sock = await fleet_socket(args.host)

    async def connect(index: int) -> None:
        async with gate:
            session = await open_session(
                args.host, args.port, args.name, args.base + index, args.ack_delay, endpoint
            )
            await session.protocol.call("join", room=args.room)
        sessions.append(session)

    await asyncio.gather(*(connect(index) for index in range(len(sessions), args.count)))
    emit({"ready": True, "pid": os.getpid()})
    start, window_end, end = await read_go()
    # From here on aioquic is not called: the fleet owns the connections and the socket.
    own = socket.socket(fileno=os.dup(sock.fileno()))
    fleet = Fleet(own, (args.host, args.port), SEND_TIME_OFFSET)
    fleet.latencies = array("I")
    loop_time = loop.time()
    for session in sessions:
        protocol = session.protocol
        protocol.stop_timer()
        fleet.adopt(protocol._quic, loop_time)
    # BENCH_FLEET_PROFILE=path: a cProfile of the loop (CPU time) in path.<pid> per process.
    profile = os.environ.get("BENCH_FLEET_PROFILE")
    if profile:
        import cProfile
        import time

        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(fleet.run, (start, window_end), end)
        profiler.dump_stats(f"{profile}.{os.getpid()}")
    else:
        fleet.run((start, window_end), end)
    emit(
        {
            "result": {
                "received": fleet.received,
                "latencies_us": fleet.latencies.tolist(),
                "worst_us": sorted(fleet.worst.items()),
                "packets_in": fleet.packets_in,
                "packets_out": fleet.packets_out,
                "fleet": fleet.counts(),
                "cpu": process_cpu_seconds(os.getpid()),
            }
        }
    )


# ---------------------------------------------------------------------------------- entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["speakers", "listeners"])
    parser.add_argument("--kind", default="salond")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--room", default="bench")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--name", default="listener")
    parser.add_argument("--base", type=int, default=0)
    parser.add_argument(
        "--generator",
        choices=["full", "fleet"],
        default="fleet",
        help="listeners as full bench clients or as the cheap fleet (bench/listener_fleet.py)",
    )
    parser.add_argument("--ack-delay", type=float, default=CLIENT_ACK_DELAY)
    parser.add_argument(
        "--placement",
        action="store_true",
        help="fleet: before joining, ask the orchestrator whether this socket reached the "
        "worker it wants (a 'probe' line, answered 'stay' or 'move' on stdin)",
    )
    parser.add_argument("--deadline", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Whatever happens, this process does not outlive its deadline.
    timer = threading.Timer(args.deadline, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    install_fast_loop()
    runner = run_speakers if args.role == "speakers" else run_listeners
    try:
        asyncio.run(runner(args))
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.stdout.flush()
        os._exit(2)
    sys.stdout.flush()
    # Leave without closing the QUIC connections one by one: the server is stopped next.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

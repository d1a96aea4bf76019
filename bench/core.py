"""The sans-I/O core's own cost: a media datagram through ``SalonCore`` and a control request.

No socket and no QUIC: one room, one speaker and ``--listeners`` listeners in an in-memory
``SalonCore``, the clock passed in. Measured with the process's CPU time, best of ``--rounds``:

- media: ``SalonCore.receive_datagram`` per copy delivered, next to the bare
  ``Forwarder.forward`` on the same flows (the baseline: what the core adds on top of it);
- requests: ``handle_request`` per request, a listener raising and lowering a hand (dispatch,
  permission check, events, the plain-data result).

Run alone: ``python bench/core.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from salon.daemon.core import Identity, SalonCore
from salon.daemon.wire import messages

FRAME = 0.020


def datagram(flow_id: int, ssrc: int, sequence: int) -> bytes:
    """``varint(flow_id) || RTP`` with an RFC 6464 level in extension id 1 (as a speaker sends)."""
    prefix = bytes([flow_id]) if flow_id < 0x40 else (flow_id | 0x4000).to_bytes(2, "big")
    header = struct.pack("!BBHII", 0x90, 111, sequence & 0xFFFF, sequence * 960, ssrc)
    header += struct.pack("!HHBBBB", 0xBEDE, 1, 0x10, 0x80 | 30, 0, 0)
    return prefix + header + b"\x55" * 60


def build(listeners: int) -> tuple[SalonCore, int, int, list[int]]:
    """A core with room r1: the owner on stage (unmuted, the speaker) and ``listeners``."""
    rng = random.Random(7)
    core = SalonCore(random_bytes=rng.randbytes)
    now = 1000.0
    core.connect(1, Identity(user="owner", display_name="Owner"), now)
    core.handle_request(1, messages.CreateRoom(id=1, room="r1", title="Bench"), now)
    core.handle_request(1, messages.Join(id=2, room="r1"), now)
    core.handle_request(1, messages.Unmute(id=3), now)
    sessions = []
    for index in range(listeners):
        session = 2 + index
        core.connect(session, Identity(user=f"l{index}", display_name="L"), now)
        core.handle_request(session, messages.Join(id=1, room="r1"), now)
        sessions.append(session)
    while core.next_event() is not None:
        pass
    flow = core.rooms["r1"].members["owner"].flow
    assert flow is not None
    return core, flow.flow_id, flow.ssrc, sessions


def drain(core: SalonCore, sessions: list[int]) -> None:
    for session in sessions:
        outlet = core.outlet(session)
        assert outlet is not None
        outlet.queue.clear()
    while core.next_event() is not None:
        pass


def media(listeners: int, packets: int, bare: bool) -> float:
    """CPU µs per copy for ``packets`` datagrams to ``listeners`` listeners."""
    core, flow_id, ssrc, sessions = build(listeners)
    data = [datagram(flow_id, ssrc, seq) for seq in range(1, packets + 1)]
    forward = core.forwarder.forward if bare else core.receive_datagram
    now = 2000.0
    reached = core.receive_datagram(1, datagram(flow_id, ssrc, 0), now - FRAME)
    assert len(reached) == listeners, f"{len(reached)} of {listeners} listeners reached"
    spent = 0.0
    for index, packet in enumerate(data):
        start = time.process_time()
        forward(1, packet, now)
        spent += time.process_time() - start
        now += FRAME
        if index % 50 == 49:
            drain(core, sessions)
    return spent / (packets * listeners) * 1e6


def requests(listeners: int, count: int) -> float:
    """CPU µs per ``handle_request`` (raise and lower a hand in turn)."""
    core, _, _, sessions = build(listeners)
    session = sessions[0]
    raise_hand, lower_hand = messages.RaiseHand(id=1), messages.LowerHand(id=2)
    now = 2000.0
    start = time.process_time()
    for _ in range(count // 2):
        core.handle_request(session, raise_hand, now)
        core.handle_request(session, lower_hand, now)
        while core.next_event() is not None:
            pass
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = range(args.rounds)
    bare = min(media(args.listeners, args.packets, True) for _ in rounds)
    core = min(media(args.listeners, args.packets, False) for _ in rounds)
    request = min(requests(args.listeners, args.requests) for _ in rounds)
    print(f"load average {os.getloadavg()[0]:.2f}; best of {args.rounds}")
    print(
        f"media 1->{args.listeners}: SalonCore.receive_datagram {core:.3f} µs/copy, "
        f"bare Forwarder.forward {bare:.3f} µs/copy (core adds {core - bare:+.3f})"
    )
    print(f"requests: handle_request {request:.2f} µs/request (raise/lower hand)")


if __name__ == "__main__":
    main()

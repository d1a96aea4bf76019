"""What a join costs in a big room, in the sans-I/O core: CPU, messages sent, room_state bytes.

    python bench/big_room.py [--members 800,10000] [--stage 10]

For each audience size it fills one room (a stage of ``--stage`` members, listeners with
64-character names), then times ``--joins`` more joins and as many leaves, and prints per join:
the core's CPU time, the control messages it queued (one per receiving session) and the size of
the joiner's room_state. The baseline comparison in the same run is the same room with audience
events announced one by one (``audience_events_above`` above the audience: the pre-bounding
behaviour for events) -- the room_state is bounded in both.
"""

from __future__ import annotations

import argparse
import random
import time

from salon.daemon.core import Identity, Limits, SalonCore
from salon.daemon.core.events import Deliver
from salon.daemon.wire import messages as m

NAME = "Listener with a display name of exactly sixty-four characters.."


def run(members: int, stage: int, joins: int, quiet: bool) -> tuple[float, float, float, int]:
    limits = Limits(audience_events_above=100 if quiet else 10**9, max_speakers_cap=100)
    core = SalonCore(limits, random_bytes=random.Random(1).randbytes)
    now = 1_000_000.0
    session = 0

    def connect(user: str) -> int:
        nonlocal session
        session += 1
        core.connect(session, Identity(user, NAME[:64]), now)
        return session

    def drain() -> int:
        sent = 0
        while (event := core.next_event()) is not None:
            if isinstance(event, Deliver):
                sent += len(event.sessions)
        return sent

    owner = connect("owner")
    core.handle_request(owner, m.CreateRoom(id=1, room="big", title="Big", max_speakers=100), now)
    core.handle_request(owner, m.Join(id=2, room="big"), now)
    for i in range(stage - 1):
        s = connect(f"speaker{i}")
        core.handle_request(s, m.Join(id=3, room="big"), now)
        core.handle_request(owner, m.InviteToSpeak(id=4, user=f"speaker{i}"), now)
        core.handle_request(s, m.AcceptSpeak(id=5), now)
    for i in range(members - stage):
        core.handle_request(connect(f"l{i:06d}"), m.Join(id=6, room="big"), now)
        drain()
    drain()
    newcomers = [connect(f"new{i:05d}") for i in range(joins)]
    sent = 0
    state_bytes = 0
    started = time.process_time()
    for s in newcomers:
        core.handle_request(s, m.Join(id=7, room="big"), now)
        while (event := core.next_event()) is not None:
            if isinstance(event, Deliver):
                sent += len(event.sessions)
                if isinstance(event.message, m.RoomState):
                    state_bytes = len(m.encode(event.message))
    join_cpu = (time.process_time() - started) / joins
    started = time.process_time()
    for s in newcomers:
        core.handle_request(s, m.Leave(id=8), now)
        sent_leave = drain()
        sent += sent_leave
    leave_cpu = (time.process_time() - started) / joins
    return join_cpu * 1e6, leave_cpu * 1e6, sent / (2 * joins), state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="800,10000")
    parser.add_argument("--stage", type=int, default=10)
    parser.add_argument("--joins", type=int, default=200)
    args = parser.parse_args()
    print(
        f"{'members':>8} {'mode':>10} {'join µs':>9} {'leave µs':>9} "
        f"{'msgs/event':>10} {'room_state B':>12}"
    )
    for members in (int(n) for n in args.members.split(",")):
        for quiet in (True, False):
            join_us, leave_us, per_event, state = run(members, args.stage, args.joins, quiet)
            mode = "coalesced" if quiet else "one-by-one"
            print(
                f"{members:>8} {mode:>10} {join_us:>9.0f} {leave_us:>9.0f} "
                f"{per_event:>10.1f} {state:>12}"
            )


if __name__ == "__main__":
    main()

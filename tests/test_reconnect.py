"""Reconnect: the client library comes back after a network drop or a daemon restart.

Clients built on :class:`ReconnectingClient` sit in a room as owner, moderator, speaker (joined
with a speaker invite) and listener. Then the network path is cut (a UDP relay drops every
packet for longer than the idle timeout), or the daemon is stopped and started again on the
same port and state. Each client must notice, reconnect with backoff, and be back in the room
with its role; the speaker's audio must reach a listener again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from salon.client.connection import SalonClient
from salon.client.reconnect import Backoff, ReconnectingClient
from salon.client.room_audio import RoomAudio
from salon.daemon.net.session import CloseCode
from tests.conftest import run_daemon
from tests.lossy_relay import LossyRelay, lossy_relay
from tests.test_reliability_support import AudioProbe, record, tone_frames

pytestmark = pytest.mark.soak

ROLES = {"Host": "owner", "Mod": "moderator", "Voice": "speaker", "Ear": "listener"}
IDLE_TIMEOUT = 5.0
"""Seconds without a packet after which client and daemon call a path dead (both sides)."""


def guest_key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(f"reconnect/{name}".encode()).digest()).decode()


def relay_to(host: str, port: int) -> contextlib.AbstractAsyncContextManager[LossyRelay]:
    """A relay between the clients and the daemon whose path the test can cut."""
    return lossy_relay(host, port)


def reconnecting(
    host: str, port: int, fingerprint: str, name: str, on_connected: Any = None
) -> ReconnectingClient:
    async def connect() -> SalonClient:
        return await SalonClient.connect(
            host,
            port,
            display_name=name,
            fingerprint=fingerprint,
            credentials={"guest_key": guest_key(name)},
            # The whole cast, the relay and the daemon share one event loop on a machine that
            # may be loaded: a 2 s idle timeout let a stalled loop drop healthy connections
            # (even while seating), so the path is judged dead after IDLE_TIMEOUT instead.
            idle_timeout=IDLE_TIMEOUT,
            # Generous: a handshake slower than this on a busy machine failed the very first
            # connection. An attempt made while the path is down simply completes once it is
            # back (QUIC retransmits its Initial); after a daemon restart likewise.
            timeout=10.0,
        )

    return ReconnectingClient(
        connect, backoff=Backoff(initial=0.2, maximum=1.0), keepalive=0.5, on_connected=on_connected
    )


class Speaker:
    """Plays a tone through RoomAudio on whatever connection the speaker has now."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.audio: RoomAudio | None = None

    def attach(self, client: SalonClient) -> None:
        if self.task is not None:
            self.task.cancel()
        self.audio = RoomAudio(client, source=tone_frames(seconds=120.0), auto_unmute=True)
        self.task = asyncio.ensure_future(self.audio.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def seat(
    owner: ReconnectingClient, cast: dict[str, ReconnectingClient], room: str, speaker: Speaker
) -> str:
    """Owner opens ``room``; the others join in their roles. Returns the speaker invite."""
    await owner.start()
    await owner.call("create_room", title="Reconnect", room=room, persistent=True)
    await owner.join(room)
    invite = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
    for name, client in cast.items():
        if client is owner:
            continue
        connection = await client.start()
        if name == "Voice":
            speaker.attach(connection)
            await client.join(room, invite=invite)
        else:
            await client.join(room)
    await owner.call("promote", user=cast["Mod"].client.user)  # type: ignore[union-attr]
    return invite


def roles_in(daemon: Any, room: str, cast: dict[str, ReconnectingClient]) -> dict[str, str]:
    members = daemon.core.rooms[room].members
    found = {}
    for name, client in cast.items():
        assert client.client is not None
        member = members.get(client.client.user)
        found[name] = member.role if member is not None else "absent"
    return found


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def hears_tone(listener: SalonClient, frames: int = 10) -> int:
    """Listen on a fresh RoomAudio until ``frames`` loud frames arrived; returns how many."""
    probe = AudioProbe()
    audio = RoomAudio(listener)
    audio.on_frame_played = probe
    # The RoomAudio must learn the speaker's key: it reads it from a fresh room_state.
    task = asyncio.ensure_future(audio.run())
    try:
        room = listener.room
        assert room is not None
        await listener.leave()
        await listener.join(room)
        await eventually(lambda: probe.loud >= frames, 30.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return probe.loud


async def test_clients_reconnect_and_rejoin_after_a_network_drop(tmp_path):
    async with run_daemon(tmp_path / "state", **{"server.idle_timeout": IDLE_TIMEOUT}) as live:
        observer = await live.client("Observer")

        async def keep_alive() -> None:
            # The daemon's idle timeout is short here: a listener in a silent room must ping.
            while True:
                await asyncio.sleep(0.5)
                await observer.call("ping")

        pinging = asyncio.ensure_future(keep_alive())
        async with relay_to(live.host, live.port) as relay:
            host, port = relay.address
            speaker = Speaker()
            cast = {
                name: reconnecting(
                    host,
                    port,
                    live.fingerprint,
                    name,
                    speaker.attach if name == "Voice" else None,
                )
                for name in ROLES
            }
            try:
                await seat(cast["Host"], cast, "talk", speaker)
                await observer.join("talk")
                assert roles_in(live.daemon, "talk", cast) == ROLES
                await hears_tone(observer)
                users = {name: c.client.user for name, c in cast.items() if c.client}
                # The path goes dead for longer than the idle timeout on both sides.
                relay.cut = True
                await eventually(lambda: not any(c.connected for c in cast.values()), 30.0)
                await asyncio.sleep(2.0)  # reconnect attempts fail while the path is cut
                relay.cut = False
                await eventually(lambda: all(c.reconnects == 1 for c in cast.values()), 30.0)
                await eventually(lambda: roles_in(live.daemon, "talk", cast) == ROLES, 30.0)
                assert {n: c.client.user for n, c in cast.items() if c.client} == users
                assert live.daemon.core.rooms["talk"].owner == users["Host"]
                heard = await hears_tone(observer)
                outages = {name: c.outages[0] for name, c in cast.items()}
                assert all(o.rejoined == "joined" for o in outages.values())
                # The old sessions were reclaimed: one session per client (and the observer).
                await eventually(lambda: len(live.daemon.server.sessions) == len(cast) + 1)
                record(
                    "reconnect_network_drop",
                    clients=len(cast),
                    roles_restored=sum(
                        roles_in(live.daemon, "talk", cast)[n] == r for n, r in ROLES.items()
                    ),
                    attempts={n: o.attempts for n, o in outages.items()},
                    seconds_to_rejoin={n: round(o.seconds, 2) for n, o in outages.items()},
                    packets_dropped_by_cut=relay.dropped,
                    loud_frames_heard_after=heard,
                )
            finally:
                pinging.cancel()
                await speaker.stop()
                await asyncio.gather(*(c.close() for c in cast.values()))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_clients_reconnect_and_rejoin_after_a_daemon_restart(tmp_path: Path):
    state = tmp_path / "state"
    port = free_udp_port()
    settings = {"server.host": "127.0.0.1", "server.port": port, "limits.owner_grace": 60.0}
    speaker = Speaker()
    cast: dict[str, ReconnectingClient] = {}
    try:
        async with run_daemon(state, **settings) as first:
            cast = {
                name: reconnecting(
                    first.host,
                    port,
                    first.fingerprint,
                    name,
                    speaker.attach if name == "Voice" else None,
                )
                for name in ROLES
            }
            invite = await seat(cast["Host"], cast, "lasting", speaker)
            assert roles_in(first.daemon, "lasting", cast) == ROLES
            fingerprint = first.fingerprint
        # The daemon is down: every client saw server_shutdown and is trying to come back.
        await eventually(lambda: not any(c.connected for c in cast.values()), 30.0)
        await asyncio.sleep(1.5)
        async with run_daemon(state, **settings) as second:
            assert second.fingerprint == fingerprint  # same certificate: the pin still holds
            await eventually(lambda: all(c.reconnects == 1 for c in cast.values()), 30.0)
            await eventually(lambda: roles_in(second.daemon, "lasting", cast) == ROLES, 30.0)
            listener = await second.client("After")
            await listener.join("lasting")
            heard = await hears_tone(listener)
            room = second.daemon.core.rooms["lasting"]
            assert room.invites[invite].uses == 2  # the speaker used its invite again
            outages = {name: c.outages[0] for name, c in cast.items()}
            record(
                "reconnect_daemon_restart",
                clients=len(cast),
                roles_restored=len(ROLES),
                attempts={n: o.attempts for n, o in outages.items()},
                seconds_to_rejoin={n: round(o.seconds, 2) for n, o in outages.items()},
                loud_frames_heard_after=heard,
            )
            await speaker.stop()
            await asyncio.gather(*(c.close() for c in cast.values()))
    finally:
        await speaker.stop()
        await asyncio.gather(*(c.close() for c in cast.values()))


def test_backoff_grows_with_jitter_up_to_its_maximum():
    backoff = Backoff(initial=1.0, maximum=60.0, rng=random.Random(4))
    delays = [backoff.delay(attempt) for attempt in range(10)]
    for attempt, delay in enumerate(delays):
        base = min(60.0, 2.0**attempt)
        assert base <= delay <= min(60.0, base * 1.5)
    assert delays[-1] == 60.0
    # Two clients lost at the same moment do not come back at the same moment.
    other = Backoff(initial=1.0, maximum=60.0, rng=random.Random(5))
    assert [other.delay(a) for a in range(5)] != delays[:5]


async def test_no_reconnect_after_rate_abuse(live):
    async def connect() -> SalonClient:
        return await live.client("Flooder")

    session = ReconnectingClient(connect, backoff=Backoff(initial=0.1, maximum=0.2))
    client = await session.start()
    for index in range(400):
        client.send_raw(b'{"type": "ping", "id": %d}' % (index + 1000))
    await eventually(lambda: bool(session.stopped_reason), 15.0)
    assert client.close_code == 0x5 and client.application_close
    await asyncio.sleep(0.5)
    assert session.reconnects == 0 and not session.connected
    await session.close()
    record("no_reconnect_after_rate_abuse", closed_with="rate_abuse 0x5", reconnects=0)


async def test_a_connection_lost_while_rejoining_is_one_more_attempt(live):
    """The new connection drops before it is back in the room: the client tries again."""
    host = await live.client("Host")
    await host.create_room("Flapping", room="flap", persistent=True)
    await host.join("flap")

    async def connect() -> SalonClient:
        return await SalonClient.connect(
            live.host,
            live.port,
            display_name="Flapper",
            fingerprint=live.fingerprint,
            credentials={"guest_key": guest_key("Flapper")},
        )

    dropped: list[SalonClient] = []

    def drop_the_first_new_connection(client: SalonClient) -> None:
        # Called with each new connection before it rejoins: the daemon closes the first one
        # at once, so the rejoin's join is never answered (the path flapped again).
        if not dropped:
            dropped.append(client)
            live.daemon.server.sessions[client.session].close_with(
                CloseCode.SERVER_SHUTDOWN, "dropped while rejoining"
            )

    session = ReconnectingClient(
        connect,
        backoff=Backoff(initial=0.1, maximum=0.5),
        on_connected=drop_the_first_new_connection,
    )
    try:
        first = await session.start()
        await session.join("flap")
        live.daemon.server.sessions[first.session].close_with(CloseCode.SERVER_SHUTDOWN, "gone")
        await eventually(lambda: session.reconnects == 1, 30.0)
        assert dropped and dropped[0].closed
        outage = session.outages[0]
        assert outage.attempts == 2 and outage.rejoined == "joined"
        assert session.client is not None and session.client is not dropped[0]
        members = live.daemon.core.rooms["flap"].members
        assert session.client.user in members and session.stopped_reason == ""
    finally:
        await session.close()
        await host.close()

"""One room across three salond nodes on a real redis-server: the room's home runs it, the
other nodes pass their clients' requests and media on (docs/cluster.md).

Three daemons run in this test's event loop (real QUIC over loopback, real Redis, real SRTP);
a fourth node, with a client but no member in the room, must receive none of its media.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from salon.client.connection import RequestError, SalonClient
from salon.daemon.cluster.lease import (
    EPOCH_KEY,
    LEASE_KEY,
    LIVE_KEY,
    ROOMS_KEY,
    EpochGuard,
    RoomLeases,
    parse_lease,
)
from salon.daemon.cluster.registry import NODE_KEY
from salon.daemon.cluster.relay import MEDIA_CHANNEL
from salon.daemon.cluster.udp_relay import INTEREST_KEY
from salon.daemon.wire import messages as msg
from salon.daemon.wire.datagram import pack_datagram
from salon.daemon.wire.rtp import RtpPacket
from salon.media.srtp import SrtpSender, key_from_base64
from tests.conftest import InProcessDaemon, run_daemon
from tests.test_cluster_registry import redis_url  # noqa: F401  (the module-scoped server)

WAIT = 30.0
"""Upper bound of every wait below: it only stops a hang, nothing is timed."""


# -- leases and fencing (one Redis, no salond) -------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:  # noqa: F811
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


async def test_one_home_per_room_and_every_takeover_raises_the_epoch(redis: Redis) -> None:
    lost: list[str] = []
    a = RoomLeases(redis, "a", lease_ms=300, on_lost=lost.append)
    b = RoomLeases(redis, "b", lease_ms=300, on_lost=lost.append)
    first = await a.acquire("r")
    assert first is not None
    assert await b.acquire("r") is None
    assert await b.home("r") == parse_lease(f"a {first}")
    await a.renew_all()
    assert a.epoch("r") == first
    # The lease ends unrenewed (as when its node dies): the next home fences the old one out.
    await redis.delete(LEASE_KEY.format("r"))
    second = await b.acquire("r")
    assert second is not None and second > first
    await a.renew_all()  # finds the lease is not its own any more
    assert a.epoch("r") is None and lost == ["r"]
    guard = EpochGuard()
    assert guard.accept("r", second)
    assert not guard.accept("r", first) and guard.stale == 1


async def test_a_home_that_cannot_renew_stops_acting_as_home_until_it_takes_the_lease_again(
    tmp_path: Path,
) -> None:
    """Redis goes away: past its own deadline the home stops acting as home, without asking
    Redis; a new Redis (a restart forgets every key) and the home takes its lease again, under a
    higher epoch than before even though the counter was forgotten too."""
    from tests.pg_cluster import free_port
    from tests.redis_server import running_redis

    port = free_port()
    lost: list[str] = []
    with running_redis(port) as url:
        redis = Redis.from_url(url)
        a = RoomLeases(redis, "a", lease_ms=300, on_lost=lost.append)
        first = await a.acquire("r")
        assert first is not None
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 0.3
        while loop.time() < deadline:
            await asyncio.sleep(0.02)
        await a.renew_all()  # Redis is down: the renewal fails
        assert a.epoch("r") is None
        with running_redis(port):
            await a.renew_all()
            again = a.epoch("r")
            assert again is not None and again > first
            assert lost == []
    finally:
        await redis.aclose()


# -- three nodes -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def nodes(
    tmp_path: Path, url: str, store: str, names: list[str], **settings: Any
) -> AsyncIterator[list[InProcessDaemon]]:
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"s" * 48)
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for name in names:
            running.append(
                await stack.enter_async_context(
                    run_daemon(
                        tmp_path / name,
                        **{
                            "cluster.redis_url": url,
                            "cluster.node_id": name,
                            "cluster.secret_file": str(secret),
                            "store.url": store,
                            **settings,
                        },
                    )
                )
            )
        yield running


async def followers(redis: Redis, room: str) -> int:
    """Nodes following the room's media, whichever relay transport runs (udp by default:
    its interest set; redis: the channel's subscribers)."""
    subscribed = int((await redis.pubsub_numsub(MEDIA_CHANNEL + room))[0][1])
    interested = await redis.zcount(INTEREST_KEY + room, int(time.time() * 1000), "+inf")
    return subscribed + int(interested)


def cluster_of(node: InProcessDaemon) -> Any:
    from salon.daemon.cluster.node import ClusterNode

    return next(c for c in node.daemon.components if isinstance(c, ClusterNode))


async def until(check: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not check():
        assert loop.time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.02)


async def event(client: SalonClient, kind: type, **match: Any) -> Any:
    return await client.wait_for_event(
        kind, timeout=WAIT, where=lambda e: all(getattr(e, k) == v for k, v in match.items())
    )


def srtp_datagrams(key: msg.MediaKey, first: int, count: int) -> list[bytes]:
    sender = SrtpSender(key_from_base64(key.key))
    return [
        pack_datagram(
            key.flow_id,
            sender.protect(
                RtpPacket(
                    payload_type=111,
                    sequence_number=seq,
                    timestamp=seq * 960,
                    ssrc=key.ssrc,
                    payload=bytes([seq % 256]) * 80,
                ).serialize()
            ),
        )
        for seq in range(first, first + count)
    ]


async def speak(speaker: SalonClient, datagrams: list[bytes], listeners: list[list[bytes]]) -> None:
    """Send, paced like audio, until every listener got them all (or the wait gives up)."""
    before = [len(got) for got in listeners]
    for datagram in datagrams:
        speaker.send_datagram(datagram)
        await asyncio.sleep(0.005)
    await until(
        lambda: all(
            len(got) - n >= len(datagrams) for got, n in zip(listeners, before, strict=True)
        ),
        "media on every listener",
    )


def slowly(load: Any) -> Any:
    """``load`` (a node's store read of a room), a second slower."""

    async def slow(room: str) -> Any:
        record = await load(room)
        await asyncio.sleep(1.0)
        return record

    return slow


async def speak_until_heard(
    speaker: SalonClient, key: msg.MediaKey, heard: list[bytes], count: int = 20
) -> list[bytes]:
    """Speak runs of ``count`` datagrams until the listener gets a whole run; the last run.
    (Right after a failover the relay's view of who follows a room may lag by its refresh
    period: a run sent meanwhile is lost, as live audio would be.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    first = 1
    while True:
        sent = srtp_datagrams(key, first, count)
        before = len(heard)
        for datagram in sent:
            speaker.send_datagram(datagram)
            await asyncio.sleep(0.005)
        settle = loop.time() + 2.0
        while len(heard) - before < count and loop.time() < settle:
            await asyncio.sleep(0.02)
        if len(heard) - before >= count:
            return sent
        assert loop.time() < deadline, "gave up waiting: the listener never heard a whole run"
        first += count


async def test_one_room_spans_three_nodes(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    async with nodes(
        tmp_path, redis_url, postgres_url, ["a", "b", "c", "d"], **{"cluster.heartbeat_ms": 300}
    ) as (a, b, c, d):
        host = await a.client("Host")
        await host.create_room("Across nodes", room="wide")
        await host.join("wide")
        state = await event(host, msg.RoomState)
        host_key = next(k for k in state.room.media_keys if k.user == host.user)
        await host.call("unmute")
        on_a = await a.client("ListenerA")
        on_b = await b.client("ListenerB")
        on_c = await c.client("ListenerC")
        idle = await d.client("Elsewhere")  # connected to d, in no room
        got: dict[str, list[bytes]] = {}
        for client in (on_a, on_b, on_c, host, idle):
            got[client.display_name] = []
            client.on_datagram = got[client.display_name].append
        for client in (on_a, on_b, on_c):
            joined = await client.join("wide")
            assert joined["status"] == "joined" and joined["room"]["room"] == "wide"
            await event(host, msg.ParticipantJoined)
        redis = Redis.from_url(redis_url)
        try:
            assert parse_lease(await redis.get(LEASE_KEY.format("wide"))).node == "a"  # type: ignore[union-attr]

            loop_checks = 0
            while await followers(redis, "wide") < 2:  # b and c; a (the home) and d do not follow
                loop_checks += 1
                assert loop_checks < WAIT / 0.02
                await asyncio.sleep(0.02)

            # An event to the room crosses to each edge once, whatever its members there.
            second = await b.client("ListenerB2")
            await second.join("wide")
            await event(host, msg.ParticipantJoined)
            control = cluster_of(a).control
            before = control.sent
            await host.call("update_room", title="Wider")
            for client in (on_b, second, on_c):
                await event(client, msg.RoomUpdated)
            assert control.sent - before == 2  # b (two members) and c
            # A client leaving its edge leaves the room at the home.
            await second.close()
            await host.wait_for_event(
                msg.ParticipantLeft, timeout=WAIT, where=lambda e: e.user == second.user
            )

            # 1. The host speaks on a: byte-identical copies on a, b and c.
            sent = srtp_datagrams(host_key, 1, 40)
            await speak(host, sent, [got["ListenerA"], got["ListenerB"], got["ListenerC"]])
            assert got["ListenerA"] == sent
            assert got["ListenerB"] == got["ListenerA"]
            assert got["ListenerC"] == got["ListenerA"]

            # 2. A listener on c raises a hand, the host on a invites it, it is heard on a and b.
            await on_c.call("raise_hand")
            queue = await event(host, msg.HandQueue)
            assert queue.users == [on_c.user]
            await host.call("invite_to_speak", user=on_c.user)
            await event(on_c, msg.SpeakInvitation)
            await on_c.call("accept_speak")
            c_key = (await event(on_c, msg.MediaKeyEvent)).key
            assert c_key.user == on_c.user
            await event(on_b, msg.MediaKeyEvent)  # the listener on b learns the new key too
            await on_c.call("unmute")
            for client in (on_a, on_b, host, on_c):
                got[client.display_name].clear()
            c_sent = srtp_datagrams(c_key, 1, 30)
            await speak(on_c, c_sent, [got["ListenerA"], got["ListenerB"], got["Host"]])
            assert got["ListenerA"] == c_sent
            assert got["ListenerB"] == c_sent
            assert got["Host"] == c_sent
            assert got["ListenerC"] == []  # a speaker does not hear itself back

            # 3. The host mutes the speaker on c: the home drops its audio, wherever it connects.
            home = a.daemon.core.forwarder
            muted_before = home.drops["muted"]
            await host.call("mute", user=on_c.user)
            await event(on_c, msg.Muted)
            for datagram in srtp_datagrams(c_key, 31, 10):
                on_c.send_datagram(datagram)
            await until(lambda: home.drops["muted"] >= muted_before + 10, "muted drops at home")
            assert got["ListenerA"] == c_sent and got["ListenerB"] == c_sent

            # 4. An unknown room is refused without a takeover attempt (no lease, no epoch,
            # no store load): the room directory does not list it.
            assert await redis.sismember(ROOMS_KEY, "wide")
            with pytest.raises(RequestError) as unknown:
                await idle.join("nosuch")
            assert unknown.value.code == "room_not_found"
            assert not await redis.exists(EPOCH_KEY.format("nosuch"))

            # The node with no member in the room received none of its media.
            far = cluster_of(d)
            assert far.relay.delivered == 0 and far.relay.rooms == set()
            assert got["Elsewhere"] == []
            for node in (b, c):
                assert cluster_of(node).relay.misrouted == 0

            # 5. Node c dies (its registry entry expires): the home lets its members go, once
            # the entry has stayed missing for its time to live (not at the first look).
            dying = cluster_of(c)
            assert dying._task is not None
            dying._task.cancel()  # no more heartbeats, as after kill -9
            await redis.delete(NODE_KEY.format("c"))
            host.drain_events()
            home_rooms = cluster_of(a).rooms
            await home_rooms.check_edges()
            assert any(m.node == "c" for m in home_rooms._remote.values())
            await host.wait_for_event(
                msg.ParticipantLeft, timeout=WAIT, where=lambda e: e.user == on_c.user
            )

            # 6. Node b restarts (its entry names a new registration): the members it had
            # before go at once, at the first check.
            restarting = cluster_of(b)
            assert restarting._task is not None
            restarting._task.cancel()
            await redis.hset(NODE_KEY.format("b"), "started_at", repr(time.time() + 1))
            await home_rooms.check_edges()
            assert not any(m.node == "b" for m in home_rooms._remote.values())
            await host.wait_for_event(
                msg.ParticipantLeft, timeout=WAIT, where=lambda e: e.user == on_b.user
            )
        finally:
            await redis.aclose()


async def test_the_room_goes_on_when_its_home_is_killed(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    """kill -9 of the room's home: another node takes the room over from the shared store,
    members on other nodes are rejoined with their roles, the owner rejoins as owner; hands
    come back in their first order, a pending knock with its request id."""
    from tests.conftest import start_salond

    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"s" * 48)
    conf = tmp_path / "a.toml"
    conf.write_text(
        f'[store]\nurl = "{postgres_url}"\n'
        f'[cluster]\nredis_url = "{redis_url}"\nnode_id = "a"\nsecret_file = "{secret}"\n'
    )
    home = start_salond(tmp_path / "a", "--config", str(conf))
    owner_key = {"guest_key": "b3duZXIta2V5LWZvci10aGUtZmFpbG92ZXItdGVzdC0xMjM="}
    try:
        async with nodes(tmp_path, redis_url, postgres_url, ["b", "c"]) as (b, c):
            host = await SalonClient.connect(
                home.host,
                home.port,
                display_name="Host",
                fingerprint=home.fingerprint,
                credentials=owner_key,
            )
            await host.create_room("Survives", room="lasting")
            await host.join("lasting")
            moderator = await c.client("Moderator")
            await moderator.join("lasting")
            await host.call("promote", user=moderator.user)
            await moderator.wait_for_event(
                msg.ParticipantUpdated,
                timeout=WAIT,
                where=lambda e: e.participant.user == moderator.user,
            )
            # An approval room: the others are let in on their knock (and so re-enter without
            # knocking after the failover); one knock is still pending when the home dies.
            await host.call("update_room", policy="approval")

            async def admitted(client: SalonClient) -> None:
                knocking = await client.join("lasting")
                assert knocking["status"] == "knocking"
                await host.call("approve_knock", request_id=knocking["request_id"])
                await event(client, msg.RoomState)

            listener = await b.client("Listener")
            heard: list[bytes] = []
            listener.on_datagram = heard.append
            await admitted(listener)
            # The volatile state: a speaker on stage by invitation, hands up, a knock.
            speaker = await b.client("Speaker")
            await admitted(speaker)
            await speaker.call("raise_hand")
            await event(host, msg.HandQueue, users=[speaker.user])
            await host.call("invite_to_speak", user=speaker.user)
            await event(speaker, msg.SpeakInvitation)
            await speaker.call("accept_speak")
            # Two hands, the later joiner's first: the edge rejoins its clients in the order
            # they joined, the queue must keep the order the hands went up in.
            second = await b.client("Second")
            await admitted(second)
            await second.call("raise_hand")
            await event(host, msg.HandQueue, users=[second.user])
            await listener.call("raise_hand")
            await event(host, msg.HandQueue, users=[second.user, listener.user])
            knocker = await c.client("Knocker")
            knocking = await knocker.join("lasting")
            assert knocking["status"] == "knocking"
            await event(host, msg.Knock)
            redis = Redis.from_url(redis_url)
            try:
                assert parse_lease(await redis.get(LEASE_KEY.format("lasting"))) is not None
                for client in (moderator, listener, speaker):
                    client.drain_events()
                # A slow store, as on a loaded machine: the node taking the room over holds
                # its lease a while before the room is loaded, and the other edge's rejoins
                # reach it meanwhile (they must wait for the room, not find none).
                for node in (b, c):
                    rooms = cluster_of(node).rooms
                    rooms._load_room = slowly(rooms._load_room)
                loop = asyncio.get_running_loop()
                home.proc.kill()  # SIGKILL: no goodbye, the lease just stops being renewed
                home.proc.wait()
                killed = loop.time()
                # A request on its way to the dead home is answered, with an error, at the
                # failover (not left hanging).
                unanswered = asyncio.ensure_future(moderator.call("lower_hand"))
                # The edges notice the home is gone and rejoin their members on their behalf:
                # one of them takes the room over from the store, with its roles.
                state = await event(moderator, (msg.RoomState, msg.Removed))
                assert isinstance(state, msg.RoomState), state
                roles = {p.user: p.role for p in state.room.participants}
                assert roles[moderator.user] == "moderator"
                with pytest.raises(RequestError) as failed:
                    await unanswered
                assert failed.value.code == "internal_error"
                new_home = parse_lease(await redis.get(LEASE_KEY.format("lasting")))
                assert new_home is not None and new_home.node in ("b", "c")
                # Who was on stage, and whose hand was up, at the dead home are so again.
                state = await event(listener, (msg.RoomState, msg.Removed))
                assert isinstance(state, msg.RoomState), state
                mine = next(p for p in state.room.participants if p.user == listener.user)
                assert mine.hand_raised and mine.role == "listener"
                state = await event(speaker, msg.RoomState)
                roles = {p.user: p.role for p in state.room.participants}
                assert roles[speaker.user] == "speaker"
                await event(second, msg.RoomState)
                # The owner's client reconnects (to b) and gets its role back.
                await host.close()
                host = await b.client("Host", credentials=owner_key)
                joined = await host.join("lasting")
                recovered = loop.time() - killed
                assert joined["role"] == "owner"
                print(f"room went on {recovered:.1f} s after kill -9 of its home")
                # The hands in the order they went up; the knock pending with its id, which
                # the owner answers at the new home.
                state = (await event(host, msg.RoomState)).room
                assert state.hand_queue == [second.user, listener.user]
                knocks = [k.request_id for k in state.knocks]
                if not knocks:  # the knocker's edge may rejoin it after the owner came back
                    knocks = [(await event(host, msg.Knock)).request.request_id]
                assert knocks == [knocking["request_id"]]
                await host.call("approve_knock", request_id=knocking["request_id"])
                await event(knocker, msg.RoomState)
                # And it is heard: the moderator on c speaks, the listener on b hears it.
                key = next(k for k in state.media_keys if k.user == moderator.user)
                await moderator.call("unmute")
                sent = await speak_until_heard(moderator, key, heard)
                assert heard[-len(sent) :] == sent
            finally:
                await redis.aclose()
    finally:
        home.stop()


async def test_media_across_nodes_resumes_after_a_redis_restart(
    tmp_path: Path, postgres_url: str
) -> None:
    """Redis restarts (forgetting every key): the nodes re-subscribe, the home takes its lease
    again, and the listener on the other node hears the speaker again."""
    from tests.pg_cluster import free_port
    from tests.redis_server import running_redis

    port = free_port()
    first = running_redis(port)
    url = first.__enter__()
    try:
        # The default relay (udp): media goes on through the outage; what must not happen is
        # the home letting the edge's members go because their entry vanished with the rest.
        async with nodes(tmp_path, url, postgres_url, ["a", "b"]) as (a, b):
            host = await a.client("Host")
            await host.create_room("Through a restart", room="steady")
            await host.join("steady")
            key = next(
                k for k in (await event(host, msg.RoomState)).room.media_keys if k.user == host.user
            )
            await host.call("unmute")
            listener = await b.client("Listener")
            heard: list[bytes] = []
            listener.on_datagram = heard.append
            await listener.join("steady")
            relay = cluster_of(b).relay
            await until(lambda: "steady" in relay.rooms, "b follows the room")
            redis = Redis.from_url(url)
            try:
                while await followers(redis, "steady") < 1:
                    await asyncio.sleep(0.02)
            finally:
                await redis.aclose()
            await speak(host, srtp_datagrams(key, 1, 10), [heard])

            # b's next heartbeat is held back until the home has checked its edges: the check
            # finds b's entry missing, as it may after any restart (it used to drop b's members).
            edge = cluster_of(b)
            assert edge._task is not None and edge.registry is not None
            edge._task.cancel()
            first.__exit__(None, None, None)
            loop = asyncio.get_running_loop()
            restarted = loop.time()
            with running_redis(port):
                redis = Redis.from_url(url)
                try:
                    home_rooms = cluster_of(a).rooms
                    while True:  # the first commands meet the connections Redis closed
                        try:
                            await home_rooms.check_edges()
                            break
                        except RedisError:
                            await asyncio.sleep(0.05)
                    assert any(m.node == "b" for m in home_rooms._remote.values())
                    edge._task = asyncio.create_task(edge.registry.run())
                    # Readiness: the home holds its lease again and b follows the room again.
                    while (
                        await redis.get(LEASE_KEY.format("steady")) is None
                        or await followers(redis, "steady") < 1
                        or not await redis.exists(NODE_KEY.format("b"))
                    ):
                        assert loop.time() < restarted + WAIT, "no recovery after the restart"
                        await asyncio.sleep(0.05)
                    await home_rooms.check_edges()  # b is back: its members stay
                    # The home wrote the room's volatile state again (Redis forgot it).
                    while not await redis.exists(LIVE_KEY.format("steady")):
                        assert loop.time() < restarted + WAIT, "volatile state not re-asserted"
                        await asyncio.sleep(0.05)
                finally:
                    await redis.aclose()
                # The home's relay reads interest again at most a second later (it missed b's
                # announcement while its subscription reconnected).
                edge_address = cluster_of(b).relay.address
                await until(
                    lambda: edge_address in (cluster_of(a).relay.interested("steady") or []),
                    "the home's relay sends to b again",
                )
                heard.clear()
                again = srtp_datagrams(key, 11, 10)
                await speak(host, again, [heard])
                print(f"relay resumed {loop.time() - restarted:.1f} s after the Redis restart")
                assert heard[-len(again) :] == again
    finally:
        with contextlib.suppress(Exception):
            first.__exit__(None, None, None)


async def test_a_home_that_lost_its_room_becomes_an_edge(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    """Another node took the room while the home was alive (its lease lapsed in a pause): the
    old home rejoins its own members at the new home and writes nothing of the room any more."""
    async with nodes(tmp_path, redis_url, postgres_url, ["a", "b"]) as (a, b):
        host = await a.client("Host")
        await host.create_room("Moving", room="moving")
        await host.join("moving")
        await host.call("unmute")
        listener = await b.client("Listener")
        heard: list[bytes] = []
        listener.on_datagram = heard.append
        await listener.join("moving")
        old, new = cluster_of(a), cluster_of(b)
        assert old.leases._task is not None
        old.leases._task.cancel()  # a pause: no renewals
        redis = Redis.from_url(redis_url)
        try:
            await redis.delete(LEASE_KEY.format("moving"))  # as if the lease had expired
            assert await new.rooms._home_of("moving") == "b"  # b takes the room over
        finally:
            await redis.aclose()
        host.drain_events()
        listener.drain_events()
        await old.leases.renew_all()  # a wakes up: the lease is b's
        assert old.leases.epoch("moving") is None and old.leases.lost == 1
        state = await event(host, msg.RoomState)  # rejoined at b, on a's behalf
        roles = {p.user: p.role for p in state.room.participants}
        assert roles[host.user] == "owner"
        await event(listener, msg.RoomState)
        key = next(k for k in state.room.media_keys if k.user == host.user)
        await host.call("unmute")
        sent = srtp_datagrams(key, 1, 10)
        await speak(host, sent, [heard])
        assert heard[-len(sent) :] == sent
        # The copy left on a is fenced off the shared store: closing it there deletes nothing.
        import time

        from salon.daemon.core import Identity

        operator = Identity("op", "Operator", operator=True)
        a.daemon.core.admin_request(operator, "moving", msg.CloseRoom(id=1), time.time())
        a.daemon.pipeline.pump()
        assert a.daemon.persistence.fenced > 0
        assert a.daemon.cluster_snapshot().counters["fenced_writes"] > 0
        await a.daemon.store.commit()
        assert await b.daemon.persistence.load_room("moving") is not None


async def test_operator_actions_are_performed_by_the_rooms_home(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    """An operator on a node that is not the room's home acts on the room at its home (the one
    writer), and gets ``home_unreachable`` when the home does not answer."""
    from salon.daemon.admin.client import AdminClient, AdminError
    from salon.daemon.cluster.tasks import cancel_and_wait

    async with nodes(
        tmp_path, redis_url, postgres_url, ["a", "b"], **{"cluster.lease_ms": 1500}
    ) as (a, b):
        host = await a.client("Host")
        await host.create_room("Ruled", room="ruled")
        await host.join("ruled")
        await event(host, msg.RoomState)
        listener = await b.client("Listener")
        await listener.join("ruled")
        await event(host, msg.ParticipantJoined)
        admin = await AdminClient.connect(b.daemon.config.admin_socket)
        try:
            await admin.mute("ruled", host.user)
            await event(host, msg.Muted)
            await admin.remove("ruled", listener.user)
            await event(listener, msg.Removed)
            # A refusal at the home comes back with its code.
            with pytest.raises(AdminError) as refused:
                await admin.remove("ruled", listener.user)
            assert refused.value.code == "participant_not_found"
            # start_room names its room itself: it goes to the home too (b has no copy).
            await host.create_room("Soon", room="soon", scheduled_for=time.time() + 3600)
            await until(lambda: cluster_of(a).leases.holds("soon"), "a is home of soon")
            await admin.start_room("soon")
            assert a.daemon.core.rooms["soon"].state == "live"
            # The home stops answering (its control bus is down).
            await cancel_and_wait(cluster_of(a).control._tasks)
            with pytest.raises(AdminError) as unreachable:
                await admin.unmute("ruled", host.user)
            assert unreachable.value.code == "home_unreachable"
        finally:
            await admin.close()


async def test_scheduled_and_persistent_rooms_run_on_their_home_only(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    """Every node restores the shared store's scheduled and persistent rooms, but only the
    room's home runs their timers (ban expiries, reminders, closing); when the home stops,
    another node claims the room and runs them, from the store."""
    from salon.daemon.admin.client import AdminClient

    fast = {"cluster.lease_ms": 1500}
    far = time.time() + 7200  # past every timer below
    redis = Redis.from_url(redis_url)
    try:
        async with contextlib.AsyncExitStack() as first:
            (a,) = await first.enter_async_context(
                nodes(tmp_path, redis_url, postgres_url, ["a"], **fast)
            )
            admin = await AdminClient.connect(a.daemon.config.admin_socket)
            try:
                await admin.create_room("kept", "Kept", persistent=True)
                await admin.create_room("later", "Later", scheduled_for=time.time() + 3600)
                await admin.ban("kept", "guest-0123456789ab", duration=3600)
            finally:
                await admin.close()
            await a.daemon.store.commit()
            for room in ("kept", "later"):  # claimed by the node that created them
                await until(lambda room=room: cluster_of(a).leases.holds(room), f"a holds {room}")
            async with nodes(tmp_path, redis_url, postgres_url, ["b"], **fast) as (b,):
                copies = b.daemon.core.rooms
                assert {"kept", "later"} <= set(copies)  # restored from the shared store
                rooms_b = cluster_of(b).rooms
                assert not rooms_b.runs_timers("kept") and not rooms_b.runs_timers("later")
                b.daemon.core.handle_timer(far)  # every timer of b's copies comes due: void
                assert "guest-0123456789ab" in copies["kept"].bans
                # The home stops: b claims both rooms, reloads them from the store, runs them.
                await first.aclose()
                copies = b.daemon.core.rooms
                for room in ("kept", "later"):
                    await until(
                        lambda room=room: (
                            rooms_b.runs_timers(room)
                            and room in copies
                            and room not in rooms_b._lookups
                        ),
                        f"b runs {room}",
                    )
                    home = parse_lease(await redis.get(LEASE_KEY.format(room)))
                    assert home is not None and home.node == "b"
                assert copies["later"].state == "scheduled"
                b.daemon.core.handle_timer(far)
                assert "guest-0123456789ab" not in copies["kept"].bans  # expired at b now
    finally:
        await redis.aclose()


def test_hands_given_back_after_a_failover_keep_their_first_order() -> None:
    """Returning hands go back by when they went up at the previous home, ahead of hands
    raised since, whatever order their users rejoin in."""
    from salon.daemon.core.hands import HandQueue

    queue = HandQueue()
    assert queue.raise_hand("raised-at-the-new-home", 30.0)
    assert queue.restore_hand("second", 20.0)
    assert queue.restore_hand("first", 10.0)
    assert not queue.restore_hand("first", 5.0)  # already queued: keeps its place
    assert queue.users() == ["first", "second", "raised-at-the-new-home"]

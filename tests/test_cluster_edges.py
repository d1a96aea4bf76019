"""kill -9 of an edge node (docs/cluster.md): its clients reconnect to another node of the
cluster, as listed in the hello's ``nodes`` (PROTOCOL.md 17), and hear the room again.

Real salond nodes on a real redis-server and PostgreSQL: the room's home (with the speaker) and a
third node run in this test's event loop, the edge the listener is connected to is a process of
its own, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from pathlib import Path

from salon.client import cli
from salon.client.connection import Redirect, SalonClient, parse_nodes
from salon.client.reconnect import Backoff, ReconnectingClient
from salon.daemon.cluster.redirect import alternatives
from salon.daemon.wire import messages as msg
from tests.conftest import run_daemon, start_salond
from tests.test_cluster_redirect import node
from tests.test_cluster_registry import redis_url  # noqa: F401  (the module-scoped server)
from tests.test_cluster_rooms import event, srtp_datagrams, until

FP = "sha256:" + ":".join(["CD"] * 32)


def test_a_node_lists_the_other_nodes_once_each_least_loaded_first() -> None:
    nodes = [
        node("a", 9, public="h:1"),
        node("w1", 4, public="h:2"),
        node("w2", 1, public="h:2"),  # a worker sharing w1's port: one address
        node("c", 2, public="h:3"),
        node("d", 0, public=""),  # no public address: a client could not check it
    ]
    listed = alternatives("a", "h:1", nodes, limit=8)
    assert [entry["node"] for entry in listed] == ["w2", "c"]
    assert alternatives("a", "h:1", nodes, limit=1) == listed[:1]
    assert alternatives("w1", "h:2", nodes, limit=8)[0]["node"] == "c"  # never its own address


def test_the_client_checks_the_listed_nodes_and_keeps_the_good_ones() -> None:
    good = {"server": "b.example:4460", "fingerprint": FP, "node": "b"}
    listed = parse_nodes(
        [
            good,
            {"server": "evil\x1b[2J:1", "fingerprint": FP, "node": "x"},
            {"server": "c.example:4460", "fingerprint": "sha256:00", "node": "c"},
            "not an object",
            good,  # twice: once
            *[{"server": f"n{i}.example:1", "fingerprint": FP, "node": f"n{i}"} for i in range(9)],
        ]
    )
    assert listed[0] == Redirect("b.example", 4460, FP, "b")
    # Eight entries are read at most; the bad ones among them are left out.
    assert [n.node for n in listed] == ["b", "n0", "n1", "n2"]
    assert parse_nodes({"server": "b.example:1"}) == () and parse_nodes(None) == ()


def _guest(name: str) -> dict[str, str]:
    return {"guest_key": base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()}


async def test_the_clients_of_a_killed_edge_hear_the_room_again_from_another_node(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"s" * 48)
    settings = {
        "cluster.redis_url": redis_url,
        "cluster.secret_file": str(secret),
        "cluster.heartbeat_ms": 200,
        "store.url": postgres_url,
    }
    conf = tmp_path / "b.toml"
    conf.write_text(
        f'[store]\nurl = "{postgres_url}"\n'
        f'[cluster]\nredis_url = "{redis_url}"\nnode_id = "b"\nsecret_file = "{secret}"\n'
        "heartbeat_ms = 200\n"
    )
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            run_daemon(tmp_path / "a", **settings, **{"cluster.node_id": "a"})
        )
        await stack.enter_async_context(
            run_daemon(tmp_path / "c", **settings, **{"cluster.node_id": "c"})
        )
        edge = start_salond(tmp_path / "b", "--config", str(conf))
        stack.callback(edge.stop)

        host = await a.client("Host")
        await host.create_room("Edges die", room="edgy")
        await host.join("edgy")
        key = next(
            k for k in (await event(host, msg.RoomState)).room.media_keys if k.user == host.user
        )
        await host.call("unmute")

        before: list[bytes] = []
        after: list[bytes] = []
        loop = asyncio.get_running_loop()
        moments: dict[str, float] = {}

        def heard_again(datagram: bytes) -> None:
            moments.setdefault("heard", loop.time())
            after.append(datagram)

        async def connect_b() -> SalonClient:
            return await SalonClient.connect(
                edge.host,
                edge.port,
                display_name="Listener",
                fingerprint=edge.fingerprint,
                credentials=_guest("Listener"),
                idle_timeout=cli.IDLE_TIMEOUT,
            )

        async def connect_node(target: Redirect) -> SalonClient:
            return await SalonClient.connect(
                target.host,
                target.port,
                display_name="Listener",
                fingerprint=target.fingerprint,
                credentials=_guest("Listener"),
                idle_timeout=cli.IDLE_TIMEOUT,
            )

        # As `salon join` does (client/cli.py), with the listener's datagrams counted.
        session = ReconnectingClient(
            connect_b,
            backoff=Backoff(initial=cli.RECONNECT_INITIAL, maximum=cli.RECONNECT_MAXIMUM),
            # Keepalive pings seldom: only the probe sent when audio stops can notice the dead
            # node before the QUIC idle timeout.
            keepalive=60,
            on_connected=lambda client: setattr(client, "on_datagram", heard_again),
            connect_node=connect_node,
            probe_after=cli.PROBE_AFTER,
            answer_within=cli.ANSWER_WITHIN,
        )
        while True:
            # Readiness: b lists the other nodes once it has read the registry.
            probe = await connect_b()
            await probe.close()
            if {n.node for n in probe.nodes} == {"a", "c"}:
                break
            await asyncio.sleep(0.1)
        stack.push_async_callback(session.close)
        listener = await session.start()
        listener.on_datagram = before.append
        await session.join("edgy")
        await event(host, msg.ParticipantJoined)

        sent = srtp_datagrams(key, 1, 3000)  # a minute of audio at most

        async def talk() -> None:
            for datagram in sent:
                host.send_datagram(datagram)
                await asyncio.sleep(0.02)

        talking = asyncio.ensure_future(talk())
        stack.callback(talking.cancel)
        await until(lambda: len(before) >= 10, "the listener on b hears the host on a")

        edge.proc.kill()  # SIGKILL: b's clients lose their node without a word
        edge.proc.wait()
        killed = loop.time()
        await until(lambda: len(after) >= 10, "the listener hears the host again")
        print(
            f"heard again {moments['heard'] - killed:.1f} s after kill -9 of the edge"
            f" ({session.outages[-1]})"
        )
        # It noticed the dead node by its unanswered probe (not the QUIC idle timeout), went
        # to a node b had listed, and hears the host's datagrams byte for byte.
        outage = session.outages[-1]
        assert outage.reason.startswith("no answer to a ping"), outage
        assert session.client is not None and session.client.target is not None
        assert session.client.target.node in ("a", "c")
        assert set(after) <= set(sent) and before == sent[: len(before)]
        assert outage.rejoined == "joined"


async def test_salon_join_moves_to_a_listed_node_when_its_node_stops(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    """`salon join` connected to b; b shuts down: the client reconnects to the node b listed
    (a), without waiting for b's announced restart, and is back in the room there."""
    from tests.test_cluster_rooms import nodes

    async with nodes(tmp_path, redis_url, postgres_url, ["a", "b"]) as (a, b):
        owner = await a.client("Owner")
        await owner.create_room("Moving on", room="moving")
        await owner.join("moving")
        while True:  # readiness: b lists a once it has read the registry
            probe = await b.client("Probe")
            await probe.close()
            if [n.node for n in probe.nodes] == ["a"]:
                break
            await asyncio.sleep(0.1)
        args = cli.build_parser().parse_args(
            [
                "join",
                "moving",
                "--server",
                f"{b.host}:{b.port}",
                "--fingerprint",
                b.fingerprint,
                "--name",
                "Wanderer",
                "--duration",
                "120",
                "--no-input",
                "--quiet",
            ]
        )
        joining = asyncio.ensure_future(cli.cmd_join(args))
        try:
            joined = await owner.wait_for_event(msg.ParticipantJoined, timeout=60)
            assert joined.participant.display_name == "Wanderer"
            await b.daemon.stop()
            again = await owner.wait_for_event(
                msg.ParticipantJoined,
                timeout=60,
                where=lambda e: e.participant.display_name == "Wanderer",
            )
            # Back through a: its own session there, not a member relayed from another node.
            session = next(
                s
                for s, p in a.daemon.server.sessions.items()
                if p.identity is not None and p.identity.display_name == "Wanderer"
            )
            assert a.daemon.core.session_room(session) == "moving"
            assert again.participant.user == joined.participant.user
        finally:
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await joining

"""The cluster's topology of issue 16 with real processes: three salond nodes on a real
redis-server and PostgreSQL, node C running two worker processes on one port (docs/cluster.md).

A speaker on A; listeners on A, B and C receive byte-identical media; a listener on C raises a
hand, the host on A invites it, and it is heard on A and B; C's worker without a member receives
none of the room's media. (tests/test_cluster_rooms.py covers the same logic in one process.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

from redis.asyncio import Redis

from salon.client.connection import SalonClient
from salon.daemon.admin.client import AdminClient
from salon.daemon.cluster.registry import live_nodes
from salon.daemon.wire import messages as msg
from tests.conftest import SalondProcess, start_salond
from tests.test_cluster_registry import redis_url  # noqa: F401  (the module-scoped server)
from tests.test_cluster_rooms import WAIT, event, followers, speak, srtp_datagrams


def _node(tmp_path: Path, name: str, url: str, store: str, workers: int = 1) -> SalondProcess:
    secret = tmp_path / "cluster.secret"
    if not secret.exists():
        secret.write_bytes(b"s" * 48)
    conf = tmp_path / f"{name}.toml"
    conf.write_text(
        f'[store]\nurl = "{store}"\n'
        f'[cluster]\nredis_url = "{url}"\nnode_id = "{name}"\nsecret_file = "{secret}"\n'
        f"heartbeat_ms = 200\nworkers = {workers}\n"
    )
    return start_salond(tmp_path / name, "--config", str(conf), timeout=60)


async def _connect(node: SalondProcess, name: str) -> SalonClient:
    key = base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()
    return await SalonClient.connect(
        node.host,
        node.port,
        display_name=name,
        fingerprint=node.fingerprint,
        credentials={"guest_key": key},
    )


async def test_three_node_processes_one_with_two_workers_carry_one_room(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    started = []
    clients: list[SalonClient] = []
    redis = Redis.from_url(redis_url)
    try:
        for name, workers in (("a", 1), ("b", 1), ("c", 2)):
            started.append(_node(tmp_path, name, redis_url, postgres_url, workers))
        a, b, c = started
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        # Readiness: both workers of c listen (the first one's log line may come before the
        # second binds the port, and a socket joining the group remaps connections made before).
        while {n.node_id for n in await live_nodes(redis)} != {"a", "b", "c-w1", "c-w2"}:
            assert loop.time() < deadline, "the nodes never registered"
            await asyncio.sleep(0.05)
        host = await _connect(a, "Host")
        on_a, on_b, on_c = [
            await _connect(node, f"Listener {node.state_dir.name}") for node in (a, b, c)
        ]
        clients += [host, on_a, on_b, on_c]
        await host.create_room("Processes", room="procs")
        await host.join("procs")
        key = next(
            k for k in (await event(host, msg.RoomState)).room.media_keys if k.user == host.user
        )
        await host.call("unmute")
        got: dict[str, list[bytes]] = {}
        for client in (host, on_a, on_b, on_c):
            got[client.display_name] = []
            client.on_datagram = got[client.display_name].append
            if client is not host:
                await client.join("procs")
                await event(host, msg.ParticipantJoined)
        deadline = loop.time() + WAIT
        # Readiness: b and the worker of c holding the listener follow the room's media.
        while await followers(redis, "procs") < 2:
            assert loop.time() < deadline, "the edges never followed the room"
            await asyncio.sleep(0.05)

        sent = srtp_datagrams(key, 1, 40)
        await speak(host, sent, [got["Listener a"], got["Listener b"], got["Listener c"]])
        assert got["Listener a"] == sent
        assert got["Listener b"] == sent and got["Listener c"] == sent

        await on_c.call("raise_hand")
        await event(host, msg.HandQueue)
        await host.call("invite_to_speak", user=on_c.user)
        await event(on_c, msg.SpeakInvitation)
        await on_c.call("accept_speak")
        c_key = (await event(on_c, msg.MediaKeyEvent)).key
        await event(on_b, msg.MediaKeyEvent)
        await on_c.call("unmute")
        for listened in got.values():
            listened.clear()
        c_sent = srtp_datagrams(c_key, 1, 30)
        await speak(on_c, c_sent, [got["Listener a"], got["Listener b"], got["Host"]])
        assert got["Listener a"] == c_sent and got["Listener b"] == c_sent
        assert got["Host"] == c_sent

        # The worker of c without a member received none of the room's media; the other did.
        nodes = {n.node_id: n for n in await live_nodes(redis)}
        assert set(nodes) == {"a", "b", "c-w1", "c-w2"}
        sockets = {"c-w1": c.state_dir / "admin.sock", "c-w2": c.state_dir / "workers/2/admin.sock"}
        delivered = {}
        for worker, path in sockets.items():
            async with await AdminClient.connect(path) as admin:
                status = await admin.status()
            assert status.cluster is not None and status.cluster.node_id == worker
            delivered[worker] = status.cluster.counters["relay_delivered"]
        assert sorted(delivered.values())[0] == 0, delivered
        assert sorted(delivered.values())[1] >= len(sent), delivered
    finally:
        for client in clients:
            await client.close()
        await redis.aclose()
        for node in reversed(started):
            node.stop()

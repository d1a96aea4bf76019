"""A cluster node's own counters (docs/admin.md): stale epochs dropped, refused uplinks, refused
control and bus messages (tampered, foreign, replayed), relay queue drops and relayed datagrams,
in the admin API's ``status``, ``salonctl status`` and the metrics.

Two salond nodes in this test's event loop on a real redis-server and PostgreSQL; the hostile
bus messages are published to Redis as an intruder would.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from salon.daemon.admin.client import AdminClient
from salon.daemon.admin.ctl import _cluster_lines
from salon.daemon.cluster.bus import BusCodec, Kind, media_body
from salon.daemon.cluster.control import CONTROL_CHANNEL, Output, Sealer
from salon.daemon.cluster.relay import MEDIA_CHANNEL
from salon.daemon.cluster.rooms import UPLINK, uplink_header
from salon.daemon.metrics import cluster_metrics
from salon.daemon.wire import messages as msg
from tests.test_cluster_registry import redis_url  # noqa: F401  (the module-scoped server)
from tests.test_cluster_rooms import cluster_of, event, nodes, speak, srtp_datagrams, until


async def test_each_node_counts_what_it_refused_and_relayed(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_url: str,
) -> None:
    # The Redis relay transport: the hostile uplink below is published there (the UDP
    # transport, the default, refuses what it cannot authenticate itself).
    async with nodes(
        tmp_path, redis_url, postgres_url, ["a", "b"], **{"cluster.relay_transport": "redis"}
    ) as (a, b):
        host = await a.client("Host")
        await host.create_room("Counted", room="counted")
        await host.join("counted")
        key = next(
            k for k in (await event(host, msg.RoomState)).room.media_keys if k.user == host.user
        )
        await host.call("unmute")
        listener = await b.client("Listener")
        heard: list[bytes] = []
        listener.on_datagram = heard.append
        await listener.join("counted")
        await until(lambda: "counted" in cluster_of(b).relay.rooms, "b follows the room")
        await speak(host, srtp_datagrams(key, 1, 10), [heard])

        secret = (tmp_path / "cluster.secret").read_bytes()
        now = int(time.time() * 1000)
        intruder = BusCodec(secret, "intruder/1", replay_window_ms=5000)
        stranger = BusCodec(b"x" * 48, "stranger/1", replay_window_ms=5000)
        sealed = Sealer(secret).seal(
            msgspec.msgpack.encode([Output(room="counted", epoch=0, sessions=[], framed=b"")])
        )
        stale = intruder.encode(Kind.CONTROL, sealed, now)  # a deposed home's event, epoch 0
        tampered = bytearray(intruder.encode(Kind.CONTROL, sealed, now))
        tampered[-40] ^= 1
        wrong_kind = intruder.encode(Kind.MEDIA, b"\x00", now)
        unknown_sender = intruder.encode(
            Kind.MEDIA,
            media_body("counted" + UPLINK, uplink_header("b", 999_999) + b"\x05" * 40),
            now,
        )
        redis = Redis.from_url(redis_url)
        try:
            for message in (
                stale,
                bytes(tampered),
                stranger.encode(Kind.CONTROL, sealed, now),  # foreign: another secret
                wrong_kind,
                wrong_kind,  # replayed
            ):
                await redis.publish(CONTROL_CHANNEL + "b", message)
            await redis.publish(MEDIA_CHANNEL + "counted" + UPLINK, unknown_sender)
        finally:
            await redis.aclose()
        edge, home = cluster_of(b), cluster_of(a)
        await until(lambda: edge.counters()["bus_refused.replayed"] == 1, "the replay refused")
        await until(lambda: home.counters()["uplink_refused"] == 1, "the uplink refused")
        relay = home.relay
        for _ in range(relay.outbound.limit + 3):  # a burst the relay cannot take: oldest drop
            relay.publish("elsewhere", b"\x05" * 40)

        async with await AdminClient.connect(b.state_dir / "admin.sock") as admin:
            status = await admin.status()
        assert status.cluster is not None
        counts = status.cluster.counters
        assert counts["stale_epochs"] == 1
        assert counts["bus_refused.bad_mac"] == 2  # tampered and foreign
        assert counts["bus_refused.replayed"] == 1
        assert counts["control_refused"] == 1
        assert counts["relay_delivered"] >= 10 and counts["relay_queue_drops"] == 0
        assert "1 stale epochs" in "\n".join(_cluster_lines(status.cluster))

        snapshot = a.daemon.cluster_snapshot()
        families = {f.name: f for f in cluster_metrics(snapshot)}
        assert families["salon_cluster_uplink_refused"].samples[0].value == 1
        assert families["salon_cluster_relay_queue_drops"].samples[0].value >= 3
        assert families["salon_cluster_relay_published"].samples[0].value >= 10
        families = {f.name: f for f in cluster_metrics(b.daemon.cluster_snapshot())}
        samples = families["salon_cluster_bus_refused"].samples
        refused = {sample.labels["reason"]: sample.value for sample in samples}
        assert refused["bad_mac"] == 2 and refused["replayed"] == 1

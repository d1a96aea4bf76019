"""The console's stats panel shows the cluster: nodes with their load, which nodes carry each
room; node and room ids from Redis are shown literally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from salon.daemon.admin import protocol as p
from salon.daemon.admin.server import cluster_status
from salon.daemon.cluster.registry import ClusterSnapshot, NodeInfo
from salon.tui.app import SalonAdminApp
from tests.test_tui_snapshots import SIZE, STATUS, FixedAdminClient, screen_text, settle


def _node(node_id: str, sessions: int, rooms: tuple[str, ...]) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        address="0.0.0.0:4433",
        started_at=1.0,
        sessions=sessions,
        rooms=len(rooms),
        public=f"{node_id}.example:4433",
        fingerprint="sha256:AB",
        room_ids=rooms,
        pid=7,
    )


SNAPSHOT = ClusterSnapshot(
    node_id="a",
    nodes=(
        _node("a", 40, ("book-club", "jazz")),
        _node("b", 12, ("jazz",)),
        _node("[red]c", 3, ()),
    ),
    read_at=1.0,
    heartbeat_failures=0,
    redirects=5,
)


def test_admin_status_says_which_nodes_carry_each_room() -> None:
    cluster = cluster_status(SNAPSHOT)
    assert cluster is not None
    assert cluster.room_nodes == {"book-club": ["a"], "jazz": ["a", "b"]}
    assert [(n.node_id, n.sessions, n.this) for n in cluster.nodes] == [
        ("a", 40, True),
        ("b", 12, False),
        ("[red]c", 3, False),
    ]
    assert cluster_status(None) is None
    # It travels as JSON like the rest of the status.
    status = msgspec.structs.replace(STATUS, cluster=cluster)
    assert msgspec.json.decode(msgspec.json.encode(status), type=p.StatusInfo) == status


def test_salonctl_status_shows_the_cluster() -> None:
    from salon.daemon.admin.ctl import format_status

    text = format_status(msgspec.structs.replace(STATUS, cluster=cluster_status(SNAPSHOT)))
    assert "cluster       node a, 3 live, 5 redirected" in text
    assert "  *a a.example:4433: 40 sessions, 2 rooms (carrying: book-club, jazz)" in text
    assert "   b b.example:4433: 12 sessions, 1 rooms (carrying: jazz)" in text


async def test_console_stats_show_nodes_load_and_rooms(tmp_path: Path) -> None:
    status = msgspec.structs.replace(STATUS, cluster=cluster_status(SNAPSHOT))

    class ClusterAdminClient(FixedAdminClient):
        async def status(self) -> p.StatusInfo:
            return status

    async def connect(path: Path) -> Any:
        return ClusterAdminClient()

    app = SalonAdminApp(Path("/run/salon/admin.sock"), connect=connect)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: "cluster" in screen_text(app), "the cluster rows")
        text = screen_text(app)
    assert "node a, 3 live" in text
    assert "*a             40 sessions, 2 rooms" in text
    assert "  b             12 sessions, 1 rooms" in text
    assert "room jazz" in text and "on a, b" in text
    assert "[red]c" in text  # literally: never markup

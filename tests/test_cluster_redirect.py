"""Redirects (PROTOCOL.md 17): the policy, the client's checks of a redirect, and `salon join`
following one over real QUIC between two salond nodes sharing a real Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from salon.client.connection import (
    MAX_REDIRECTS,
    RedirectError,
    RequestError,
    SalonClient,
    parse_redirect,
)
from salon.daemon.admin.client import AdminClient
from salon.daemon.admin.protocol import StatusInfo
from salon.daemon.cluster.redirect import choose_node
from salon.daemon.cluster.registry import NodeInfo
from salon.daemon.wire import messages as msg
from tests.conftest import InProcessDaemon, SalondProcess, salon_cli, start_salond
from tests.redis_server import running_redis

FP = "sha256:" + ":".join(["AB"] * 32)


def node(node_id: str, sessions: int, rooms: tuple[str, ...] = (), public: str = "h:1") -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        address=public,
        started_at=0.0,
        sessions=sessions,
        rooms=len(rooms),
        public=public,
        fingerprint=FP,
        room_ids=rooms,
    )


# -- the policy ---------------------------------------------------------------------------


def test_redirects_only_past_the_margin_to_a_node_carrying_the_room() -> None:
    nodes = [node("a", 5), node("b", 3, ("jazz",)), node("c", 0)]
    # c is the least loaded, but only b carries the room (rooms do not span nodes yet).
    assert choose_node("a", 5, nodes, "jazz", margin=2) == nodes[1]
    assert choose_node("a", 4, nodes, "jazz", margin=2) is None  # 4 - 3 < 2
    assert choose_node("a", 5, nodes, "books", margin=2) is None  # nobody else carries it
    assert choose_node("a", 50, nodes, "jazz", margin=0) is None  # 0: never


def test_carriers_first_then_any_node_once_rooms_span_nodes() -> None:
    nodes = [node("a", 9), node("b", 6, ("jazz",)), node("c", 0)]
    assert choose_node("a", 9, nodes, "jazz", margin=2, any_node_serves_room=True) == nodes[1]
    assert choose_node("a", 7, nodes, "jazz", margin=2, any_node_serves_room=True) == nodes[2]
    # The room directory hook decides who carries a room when it is given.
    hook = choose_node("a", 9, nodes, "jazz", margin=2, carriers=lambda room: {"c"})
    assert hook == nodes[2]


def test_nodes_without_contact_are_never_chosen() -> None:
    nodes = [node("a", 9), node("b", 0, ("jazz",), public="")]
    assert choose_node("a", 9, nodes, "jazz", margin=2) is None


# -- the client's checks --------------------------------------------------------------------


def test_a_valid_redirect_is_parsed() -> None:
    target = parse_redirect(
        {"status": "redirect", "server": "b.example:4433", "fingerprint": FP, "node": "b"}
    )
    assert (target.host, target.port, target.node) == ("b.example", 4433, "b")
    v6 = parse_redirect({"server": "[::1]:9", "fingerprint": FP.lower(), "node": "n"})
    assert (v6.host, v6.port, v6.server, v6.fingerprint) == ("::1", 9, "[::1]:9", FP)


@pytest.mark.parametrize(
    "server, fingerprint, node_id",
    [
        ("b.example", FP, "b"),  # no port
        ("b.example:0", FP, "b"),
        ("b.example:65536", FP, "b"),
        ("b.example:+443", FP, "b"),
        ("b.exa mple:443", FP, "b"),
        ("-b.example:443", FP, "b"),
        ("b\x1b[2J.example:443", FP, "b"),
        ("x" * 300 + ":443", FP, "b"),
        ("b.example:443", "sha256:AB", "b"),
        ("b.example:443", FP, ""),
        ("b.example:443", FP, "n" * 65),
        (443, FP, "b"),
    ],
)
def test_a_malformed_redirect_is_refused(server: object, fingerprint: str, node_id: str) -> None:
    with pytest.raises(RedirectError):
        parse_redirect(
            {"status": "redirect", "server": server, "fingerprint": fingerprint, "node": node_id}
        )


# -- two salond nodes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (./run test installs it)")
    with running_redis() as url:
        yield url


def _config(
    tmp_path: Path, name: str, redis_url: str, store: str, margin: int, metrics: str = ""
) -> Path:
    secret = tmp_path / "cluster.secret"
    if not secret.exists():
        secret.write_bytes(b"s" * 48)
    conf = tmp_path / f"{name}.toml"
    # Nodes share their durable state: the PostgreSQL store, never one SQLite file.
    conf.write_text(
        f'[store]\nurl = "{store}"\n'
        f'[cluster]\nredis_url = "{redis_url}"\nnode_id = "{name}"\nsecret_file = "{secret}"\n'
        f"heartbeat_ms = 200\nredirect_margin = {margin}\n{metrics}"
    )
    return conf


def _guest(name: str) -> dict[str, str]:
    """A guest of its own (the CLI uses this machine's guest key: the same user would replace)."""
    return {"guest_key": base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()}


METRICS = "[metrics]\nenabled = true\nport = 0\n"


def _metrics(daemon: SalondProcess) -> str:
    import re
    import urllib.request

    url = re.findall(r"metrics on (http://\S+)", daemon.log_text())[-1]
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


async def _status_when(daemon: SalondProcess, ready: object) -> StatusInfo:
    """Poll the admin API until ``ready(status)`` (a readiness wait, not a timing check)."""
    assert callable(ready)
    deadline = time.monotonic() + 60
    async with await AdminClient.connect(daemon.state_dir / "admin.sock") as admin:
        while True:
            status = await admin.status()
            if ready(status) or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.1)


async def test_salon_join_follows_a_redirect_to_the_node_carrying_the_room(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    a = start_salond(
        tmp_path / "a", "--config", str(_config(tmp_path, "a", redis_url, postgres_url, 2, METRICS))
    )
    b = start_salond(
        tmp_path / "b", "--config", str(_config(tmp_path, "b", redis_url, postgres_url, 0))
    )
    clients: list[SalonClient] = []
    try:
        owner = await SalonClient.connect(
            b.host,
            b.port,
            display_name="Owner",
            fingerprint=b.fingerprint,
            credentials=_guest("Owner"),
        )
        clients.append(owner)
        await owner.create_room("Talk", room="talk")
        await owner.join("talk")
        for name in ("Idle 1", "Idle 2"):
            clients.append(
                await SalonClient.connect(
                    a.host,
                    a.port,
                    display_name=name,
                    fingerprint=a.fingerprint,
                    credentials=_guest(name),
                )
            )

        def settled(status: StatusInfo) -> bool:
            cluster = status.cluster
            if cluster is None:
                return False
            load = {n.node_id: n.sessions for n in cluster.nodes}
            return load == {"a": 2, "b": 1} and cluster.room_nodes == {"talk": ["b"]}

        status = await _status_when(a, settled)
        assert status.cluster is not None and settled(status), status.cluster
        assert [n.node_id for n in status.cluster.nodes if n.this] == ["a"]
        assert {n.node_id: n.public for n in status.cluster.nodes} == {"a": a.server, "b": b.server}

        async def keep_alive() -> None:  # the idle clients wait longer than the idle timeout
            while True:
                await asyncio.sleep(2)
                for client in clients:
                    await client.call("ping")

        pinger = asyncio.ensure_future(keep_alive())
        done = await asyncio.to_thread(
            subprocess.run,
            [
                *salon_cli(
                    a, "join", "talk", "--name", "Moved", "--duration", "1", "--no-input", "--quiet"
                )
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"redirected to node b at {b.server}" in done.stderr
        joined = await owner.wait_for_event(msg.ParticipantJoined, timeout=30)
        assert joined.participant.display_name == "Moved"
        status = await _status_when(a, lambda s: s.cluster is not None and s.cluster.redirects == 1)
        assert status.cluster is not None and status.cluster.redirects == 1
        # A client that does not say it follows redirects is served here, never redirected.
        try:
            served = await clients[1].join("talk")
        except RequestError as exc:
            assert exc.code == "room_not_found"  # a room held by another node alone
        else:
            assert served["status"] == "joined"
        pinger.cancel()
        # Metrics per node: this node's name, every live node's load, the redirect counted.
        text = await asyncio.to_thread(_metrics, a)
        assert 'salon_cluster_node{node_id="a"} 1.0' in text
        assert 'salon_cluster_node_sessions{node_id="a"}' in text
        assert 'salon_cluster_node_sessions{node_id="b"}' in text
        assert "salon_cluster_nodes 2.0" in text
        assert "salon_cluster_redirects_total 1.0" in text
    finally:
        for client in clients:
            await client.close()
        b.stop()
        a.stop()


async def test_a_redirect_loop_ends_on_the_client(live: InProcessDaemon) -> None:
    """A server that redirects every join to itself (a broken or hostile one: salond never
    redirects a client that already followed one): `salon join` gives up after MAX_REDIRECTS
    redirects with an error, having sent the growing count in each hello."""
    from salon.client import cli

    server = live.daemon.server
    seen: list[int | None] = []
    real_hello = server._hello

    async def hello(protocol: Any, request: msg.Hello) -> None:
        seen.append(request.redirects)
        await real_hello(
            protocol, request.__class__(**{**msgspec.structs.asdict(request), "redirects": 0})
        )

    server._hello = hello
    server.redirect = lambda room: {
        "status": "redirect",
        "server": f"{live.host}:{live.port}",
        "fingerprint": live.fingerprint,
        "node": "self",
    }
    args = cli.build_parser().parse_args(
        [
            "join",
            "anywhere",
            "--server",
            f"{live.host}:{live.port}",
            "--fingerprint",
            live.fingerprint,
            "--duration",
            "1",
            "--no-input",
            "--quiet",
            "--no-reconnect",
        ]
    )
    assert await cli.cmd_join(args) == 1
    assert seen == list(range(MAX_REDIRECTS + 1))


async def test_a_redirect_to_an_unreachable_node_falls_back_to_the_sender(
    live: InProcessDaemon,
) -> None:
    """The registry lists a dead node for up to three heartbeats: a client sent there comes
    back to the node that sent it, which then serves it (it has followed a redirect)."""
    from salon.client import cli
    from tests.pg_cluster import free_port

    server = live.daemon.server
    server.redirect = lambda room: {
        "status": "redirect",
        "server": f"127.0.0.1:{free_port()}",  # nothing listens there
        "fingerprint": live.fingerprint,
        "node": "gone",
    }
    owner = await live.client("Owner")
    await owner.create_room("Here", room="here")
    await owner.join("here")
    args = cli.build_parser().parse_args(
        [
            "join",
            "here",
            "--server",
            f"{live.host}:{live.port}",
            "--fingerprint",
            live.fingerprint,
            "--name",
            "Back",
            "--connect-timeout",
            "2",
            "--duration",
            "0.5",
            "--no-input",
            "--quiet",
            "--no-reconnect",
        ]
    )
    assert await cli.cmd_join(args) == 0
    joined = await owner.wait_for_event(msg.ParticipantJoined, timeout=30)
    assert joined.participant.display_name == "Back"


async def test_a_client_whose_node_dies_goes_back_to_the_node_it_first_asked(
    live: InProcessDaemon, tmp_path: Path
) -> None:
    """Redirected from A to B, `salon join` loses B (stopped): it reconnects, cannot reach B,
    and rejoins the room at A, which serves it (it followed a redirect already). The room
    exists on both here; once rooms span nodes it is one room."""
    from salon.client import cli
    from tests.conftest import run_daemon

    async with run_daemon(tmp_path / "b") as b:
        live.daemon.server.redirect = lambda room: {
            "status": "redirect",
            "server": f"{b.host}:{b.port}",
            "fingerprint": b.fingerprint,
            "node": "b",
        }
        owner_a = await live.client("Owner A")
        await owner_a.create_room("Here", room="here")
        await owner_a.join("here")
        owner_b = await b.client("Owner B")
        await owner_b.create_room("Here", room="here")
        await owner_b.join("here")
        args = cli.build_parser().parse_args(
            [
                "join",
                "here",
                "--server",
                f"{live.host}:{live.port}",
                "--fingerprint",
                live.fingerprint,
                "--name",
                "Wanderer",
                "--connect-timeout",
                "2",
                "--duration",
                "120",
                "--no-input",
                "--quiet",
            ]
        )
        joining = asyncio.ensure_future(cli.cmd_join(args))
        try:
            on_b = await owner_b.wait_for_event(msg.ParticipantJoined, timeout=60)
            assert on_b.participant.display_name == "Wanderer"
            await b.daemon.stop()
            on_a = await owner_a.wait_for_event(msg.ParticipantJoined, timeout=90)
            assert on_a.participant.display_name == "Wanderer"
            assert args.server == f"{live.host}:{live.port}"
        finally:
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await joining

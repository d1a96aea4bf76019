"""Security defaults: secrets never reach the log, limits are on by default and enforced.

- A real ``salond`` process at ``--log-level debug`` serves clients that authenticate with a
  static token and with guest keys, use and forge invite links, and fail authentication; its
  whole log is then searched for every secret: none may appear.
- The admin socket and the TLS key are private to the daemon's user.
- The limits against abuse (rooms per identity, message rate, knock rate) have sane defaults
  and refuse with their documented error codes over the network.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import stat
from pathlib import Path

import pytest

from salon.client.connection import RequestError, SalonClient
from salon.daemon.config import load_config
from salon.daemon.tls import PRIVATE_KEY_FILE
from tests.conftest import run_daemon, start_salond
from tests.test_reliability_support import record

pytestmark = pytest.mark.soak


def guest_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def test_secrets_never_appear_in_the_log(tmp_path: Path):
    token = secrets.token_urlsafe(24)
    wrong_token = secrets.token_urlsafe(24)
    keys = [guest_key() for _ in range(3)]
    config = tmp_path / "salond.toml"
    config.write_text(f'[auth.tokens]\n"{token}" = "alice"\n', encoding="utf-8")
    daemon = start_salond(tmp_path / "state", "--config", str(config), "--log-level", "debug")
    invites: list[str] = []
    try:
        host, port, pin = daemon.host, daemon.port, daemon.fingerprint

        async def connect(name: str, credentials: dict[str, str]) -> SalonClient:
            return await SalonClient.connect(
                host, port, display_name=name, fingerprint=pin, credentials=credentials
            )

        alice = await connect("Alice", {"token": token})
        assert alice.user == "alice"
        with pytest.raises(RequestError) as refused:
            await connect("Mallory", {"token": wrong_token})
        assert refused.value.code == "auth_failed"
        guests = [await connect(f"Guest {i}", {"guest_key": key}) for i, key in enumerate(keys)]
        await alice.create_room("Private", room="private", policy="invite")
        await alice.join("private")
        for role in ("listener", "speaker"):
            invites.append((await alice.call("create_invite", role=role))["invite"]["token"])
        await guests[0].join("private", invite=invites[0])
        await guests[1].join("private", invite=invites[1])
        with pytest.raises(RequestError) as forged:
            await guests[2].join("private", invite=invites[0][::-1])
        assert forged.value.code == "invite_invalid"
        await alice.call("revoke_invite", token=invites[1])
        # A malformed hello carrying a secret in an unexpected place.
        guests[2].send_raw(
            b'{"type": "hello", "id": 77, "credentials": {"token": "%s"}}' % (wrong_token.encode())
        )
        await asyncio.sleep(0.3)
        for client in (alice, *guests):
            await client.close()
    finally:
        code = daemon.stop()
    log = daemon.log_text()
    assert code == 0, log
    assert "DEBUG" in log  # the daemon did log at debug level
    leaked = [
        name
        for name, secret in [
            ("token", token),
            ("wrong token", wrong_token),
            *((f"guest key {i}", key) for i, key in enumerate(keys)),
            *((f"invite {i}", invite) for i, invite in enumerate(invites)),
            ("forged invite", invites[0][::-1]),
        ]
        if secret in log
    ]
    assert not leaked, f"secrets in the log: {leaked}"
    record(
        "secrets_in_log",
        log_lines=len(daemon.lines),
        secrets_checked=2 + len(keys) + 2 * len(invites) - 1,
        secrets_found=0,
    )


async def test_private_files_are_private(live):
    config = live.daemon.config
    socket_path = config.admin_socket
    mode = stat.S_IMODE(os.stat(socket_path).st_mode)
    assert mode & 0o077 == 0, oct(mode)
    key = Path(config.tls_dir) / PRIVATE_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0, key
    assert stat.S_IMODE(Path(config.tls_dir).stat().st_mode) & 0o077 == 0


def test_abuse_limits_have_sane_defaults():
    limits = load_config(None, {}).limits
    assert 1 <= limits.max_rooms_per_user <= 20
    assert 10 <= limits.message_rate <= 200 and limits.message_burst >= limits.message_rate
    assert 1 <= limits.knock_rate <= 50
    assert limits.max_sessions >= 1000
    record(
        "limit_defaults",
        max_rooms_per_user=limits.max_rooms_per_user,
        message_rate=limits.message_rate,
        message_burst=limits.message_burst,
        knock_rate=limits.knock_rate,
        max_sessions=limits.max_sessions,
    )


@pytest.mark.parametrize("limit", [None, 2])
async def test_rooms_per_identity_are_limited(tmp_path, limit):
    overrides = {} if limit is None else {"limits.max_rooms_per_user": limit}
    async with run_daemon(tmp_path / "state", **overrides) as live:
        allowed = live.daemon.config.limits.max_rooms_per_user
        owner = await live.client("Hoarder", credentials={"guest_key": guest_key()})
        for index in range(allowed):
            await owner.create_room(f"Room {index}")
        with pytest.raises(RequestError) as refused:
            await owner.create_room("One too many")
        assert refused.value.code == "room_limit"
        assert len(live.daemon.core.rooms) == allowed
        # Another identity is not affected by the first one's rooms.
        other = await live.client("Other", credentials={"guest_key": guest_key()})
        await other.create_room("Mine")
        record("rooms_per_identity", limit=allowed, created=allowed, refused_with="room_limit")

"""approval: allow-listed and previously approved people skip the knock; first visits are
annotated for the hosts."""

from __future__ import annotations

from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from tests.test_plugin_support import guest, plugin_daemon

FRIEND_KEY = guest()


async def club(running) -> SalonClient:
    host = await running.client(
        "Host", credentials={"guest_key": "aG9zdC1rZXktYXBwcm92YWwtdGVzdHMtMTIzNDU2Nzg="}
    )
    await host.create_room("Club", room="club", policy="approval")
    await host.join("club")
    return host


async def test_allow_list_first_visits_and_remembered_approvals(tmp_path):
    overrides = {"plugins.enabled": "approval", "plugins.approval.allow_users": []}
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await club(running)
        # Never seen here: the hosts are told.
        friend = await running.client("Friend", credentials=FRIEND_KEY)
        assert (await friend.join("club"))["status"] == "knocking"
        knock = await host.wait_for_event(msg.Knock, timeout=10)
        assert knock.request.trust == ["first visit"]
        await host.call("approve_knock", request_id=knock.request.request_id)
        await friend.leave()
        # The core forgets approvals when the room closes; the plugin keeps them, on disk.
        await host.call("close_room")
        plugin = running.daemon.plugins.pm.get_plugin("approval")
        assert plugin.approved == {friend.user: {"club"}}
    async with plugin_daemon(tmp_path, **overrides) as running:
        await club(running)
        friend = await running.client("Friend", credentials=FRIEND_KEY)
        assert (await friend.join("club"))["status"] == "joined"


async def test_allow_listed_users_and_verified_attributes(tmp_path):
    overrides = {
        "plugins.enabled": "token_auth, approval",
        "plugins.token_auth.tokens": {
            "t-ann": "ann",
            "t-ben": {"user": "ben", "verified": {"email_domain": "example.org"}},
            "t-cid": {"user": "cid", "verified": {"email_domain": "elsewhere.net"}},
        },
        "plugins.approval.allow_users": ["ann"],
        "plugins.approval.allow_verified": {"email_domain": ["example.org"]},
        "plugins.approval.persist": False,
    }
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await club(running)
        for token, status in [("t-ann", "joined"), ("t-ben", "joined"), ("t-cid", "knocking")]:
            client = await running.client(token, credentials={"token": token})
            assert (await client.join("club"))["status"] == status
        knock = await host.wait_for_event(msg.Knock, timeout=10)
        assert knock.request.user == "cid" and knock.request.trust == ["first visit"]
        # cid has been seen now (in no room, though: a knock is not a visit).
        lobby = await running.client("Lobby owner")
        await lobby.create_room("Lobby", room="lobby")
        cid_again = await running.client("cid", credentials={"token": "t-cid"})
        await cid_again.join("lobby")
        await cid_again.leave()
        await cid_again.join("club")
        knock = await host.wait_for_event(
            msg.Knock, timeout=10, where=lambda e: e.request.trust != ["first visit"]
        )
        assert knock.request.trust == ["seen before"]
    assert not (tmp_path / "state" / "plugins" / "approval" / "approved.json").exists()

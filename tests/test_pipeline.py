"""One request pipeline: a client's, an operator's and a plugin's request take the same steps
(policy review, core, event pump, the store's commit barrier), and only the actor differs."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

import salon.daemon
from salon.client.connection import RequestError
from salon.daemon.admin.client import AdminClient, AdminError
from salon.daemon.core import CoreError, Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl
from salon.daemon.wire import messages as msg
from tests.test_plugin_support import plugin_daemon

FORBIDDEN = "forbidden title"


class TitleGuard:
    """Refuses one room title, whoever asks for it: the policy sees every source."""

    def __init__(self) -> None:
        self.reviewed: list[str] = []

    @hookimpl
    def authorize(self, identity: Identity, action: str, request: Any) -> Deny | None:
        if action == "update_room":
            self.reviewed.append(identity.user)
            if request.title == FORBIDDEN:
                return Deny("not that title")
        return None


class Actor:
    """A plugin that acts on rooms through its SalonAPI."""

    def __init__(self) -> None:
        self.api: SalonAPI | None = None

    @hookimpl
    def startup(self, api: SalonAPI) -> None:
        self.api = api


class HeldCommit:
    """Stands in front of the store's commit barrier: holds it until released, and records
    when the commit finished, so a test can see that the ``ok`` comes after it."""

    def __init__(self, commit: Any, order: list[str]) -> None:
        self.commit = commit
        self.order = order
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self) -> None:
        self.entered.set()
        await self.gate.wait()
        await self.commit()
        self.order.append("committed")


async def test_client_operator_and_plugin_requests_take_the_same_pipeline(tmp_path: Path) -> None:
    guard, actor = TitleGuard(), Actor()
    async with plugin_daemon(
        tmp_path, {"guard": guard, "actor": actor}, **{"admin.enabled": True}
    ) as running:
        daemon = running.daemon
        owner = await running.client("Owner")
        await owner.create_room("Deck", room="deck")
        await owner.join("deck")
        bystander = await running.client("Bystander")
        admin = await AdminClient.connect(daemon.config.admin_socket)
        assert actor.api is not None and admin.welcome is not None
        api, operator = actor.api, admin.welcome.operator

        async def as_client(title: str) -> Any:
            return await owner.call("update_room", title=title)

        async def as_operator(title: str) -> Any:
            return await admin.act("deck", "update_room", title=title)

        async def as_plugin(title: str) -> Any:
            return await api.update_room("deck", title=title)

        sources = {
            owner.user: (as_client, RequestError),
            operator: (as_operator, AdminError),
            "plugin:actor": (as_plugin, CoreError),
        }
        try:
            for user, (perform, refused) in sources.items():
                # 1. The policy reviews it: a plugin's refusal reaches this source.
                with pytest.raises(refused) as caught:
                    await perform(FORBIDDEN)
                code = caught.value.code
                assert getattr(code, "value", code) == "denied_by_plugin"
                assert guard.reviewed[-1] == user

                # 2. The ok comes only after the store's commit.
                order: list[str] = []
                barriers = daemon.pipeline.commit_barriers
                held = HeldCommit(daemon.store.commit, order)
                barriers[barriers.index(daemon.store.commit)] = held
                try:
                    task = asyncio.ensure_future(perform(f"Deck by {user}"))
                    await asyncio.wait_for(held.entered.wait(), 10)
                    # Another session's round trip: the server has had every chance to answer.
                    await bystander.call("ping")
                    assert not task.done()
                    held.gate.set()
                    await asyncio.wait_for(task, 10)
                    order.append("ok")
                finally:
                    barriers[barriers.index(held)] = daemon.store.commit
                assert order == ["committed", "ok"]

                # 3. It is in the durable audit trail, as this actor.
                entries = await daemon.store.audit_log(room="deck")
                assert (entries[0].actor, entries[0].action) == (user, "update_room")
                assert entries[0].detail == {"title": f"Deck by {user}"}
        finally:
            await admin.close()


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any level (TYPE_CHECKING blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


DAEMON = Path(salon.daemon.__file__).parent


def test_hooks_import_nothing_from_the_quic_layer() -> None:
    offenders = {
        str(path.relative_to(DAEMON)): sorted(
            m for m in _imported_modules(path) if m.startswith("salon.daemon.net")
        )
        for path in (DAEMON / "hooks").glob("*.py")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


@pytest.mark.parametrize("module", ["admin/server.py", "metrics.py", "pipeline.py"])
def test_components_do_not_take_the_whole_daemon(module: str) -> None:
    assert "salon.daemon.app" not in _imported_modules(DAEMON / module)


def test_the_request_policy_types_live_with_the_pipeline() -> None:
    from salon.daemon import pipeline
    from salon.daemon.net import server

    for name in ("Review", "RequestPolicy", "Authenticator", "AllowAll"):
        assert hasattr(pipeline, name)
        assert not hasattr(server, name), f"{name} is back in the QUIC layer"
    assert msg.Ping  # the wire package stays importable on its own

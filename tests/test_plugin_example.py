"""The example plugin of docs/writing_plugins.md, loaded through its entry point, over QUIC.

examples/salon-plugin-hello is its own package (./run installs it); salond finds it only
through the ``salon.plugins`` entry point named ``hello`` and ``[plugins] enabled``.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from salon.client.connection import SalonClient
from salon.daemon.config import ConfigError
from salon.daemon.hooks import installed_plugins
from salon.daemon.wire import messages as msg
from tests.conftest import start_salond
from tests.test_plugin_support import guest, plugin_daemon, refused


def test_the_example_is_installed_as_an_entry_point():
    entry_point = installed_plugins().get("hello")
    assert entry_point is not None, "pip install -e examples/salon-plugin-hello (./run does)"
    assert entry_point.value == "salon_plugin_hello:HelloPlugin"
    assert entry_point.dist is not None and entry_point.dist.name == "salon-plugin-hello"


async def test_knocks_are_greeted_with_a_visit_count(tmp_path):
    settings = {"plugins.enabled": "hello", "plugins.hello.greeting": '"hi"'}
    async with plugin_daemon(tmp_path, **settings) as running:
        plugin = running.daemon.plugins.pm.get_plugin("hello")
        assert type(plugin).__module__ == "salon_plugin_hello"
        host = await running.client("Host")
        await host.create_room("First club", room="first", policy="approval")
        await host.join("first")
        bob = await running.client("Bob")
        assert (await bob.join("first"))["status"] == "knocking"
        knock = await host.wait_for_event(msg.Knock, timeout=10)
        assert knock.request.trust == ["hi: first visit"]
        await host.call("approve_knock", request_id=knock.request.request_id)
        await bob.wait_for_event(msg.RoomState, timeout=10)
        await bob.call("leave")

        # The plugin's participant_joined observer counted the visit.
        await host.call("leave")
        await host.create_room("Second club", room="second", policy="approval")
        await host.join("second")
        assert (await bob.join("second"))["status"] == "knocking"
        knock = await host.wait_for_event(msg.Knock, timeout=10)
        assert knock.request.trust == ["hi: 1 earlier visits"]


async def test_shouted_titles_are_refused_or_fixed(tmp_path):
    async with plugin_daemon(tmp_path, **{"plugins.enabled": "hello"}) as running:
        ada = await running.client("Ada")
        error = await refused(ada.create_room("LOUD ROOM", room="loud"))
        assert (error.code, error.message) == (
            "denied_by_plugin",
            "please do not shout: write the title in lower case",
        )
        created = await ada.create_room("Quiet room", room="quiet")
        assert created["title"] == "Quiet room"

    settings = {"plugins.enabled": "hello", "plugins.hello.fix_shouting": "true"}
    async with plugin_daemon(tmp_path / "fixing", **settings) as running:
        ada = await running.client("Ada")
        created = await ada.create_room("LOUD ROOM", room="loud")
        assert created["title"] == "Loud room"


async def test_a_misspelled_setting_stops_salond_with_its_name(tmp_path):
    settings = {"plugins.enabled": "hello", "plugins.hello.greting": '"hi"'}
    with pytest.raises(ConfigError) as caught:
        async with plugin_daemon(tmp_path, **settings):
            pass
    assert "plugins.hello.greting: unknown key (known: greeting, fix_shouting)" in str(caught.value)


async def test_a_salond_process_loads_it_from_the_configuration_file(tmp_path):
    config = tmp_path / "salond.toml"
    config.write_text('[plugins]\nenabled = ["hello"]\n\n[plugins.hello]\ngreeting = "howdy"\n')
    daemon = start_salond(tmp_path / "state", "--config", str(config))
    clients: list[SalonClient] = []
    try:

        async def connect(name: str) -> SalonClient:
            client = await SalonClient.connect(
                daemon.host,
                daemon.port,
                display_name=name,
                fingerprint=daemon.fingerprint,
                credentials=guest(),
            )
            clients.append(client)
            return client

        host = await connect("Host")
        await host.create_room("Club", room="club", policy="approval")
        await host.join("club")
        error = await refused(host.call("update_room", title="WELCOME ALL"))
        assert error.code == "denied_by_plugin"
        visitor = await connect("Visitor")
        assert (await visitor.join("club"))["status"] == "knocking"
        knock = await host.wait_for_event(msg.Knock, timeout=10)
        assert knock.request.trust == ["howdy: first visit"]
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3)
        code = daemon.stop()
    assert code == 0, daemon.log_text()
    assert "ready to say howdy" in daemon.log_text()

"""The plugin host without sockets: loading, order, settings errors, calling rules, observers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest

from salon.daemon.auth import AuthError
from salon.daemon.config import ConfigError, load_config
from salon.daemon.core import Identity, RoomCreated, SalonCore
from salon.daemon.hooks import DEFAULT_PLUGINS, Deny, Failure, PluginHost, hookimpl
from salon.daemon.hooks import manager as manager_module
from salon.daemon.stats import ServerStats


class FakePipeline:
    """What the plugin host uses of the request pipeline."""

    def __init__(self) -> None:
        self.core = SalonCore()
        self.observers: list[Any] = []

    def notify(self, event: Any) -> None:
        for observer in self.observers:
            observer(event)


def make_host(tmp_path: Any = None, **overrides: Any) -> PluginHost:
    values = dict(overrides)
    if tmp_path is not None:
        values["server.state_dir"] = str(tmp_path)
    return PluginHost(load_config(None, values), FakePipeline(), ServerStats())  # type: ignore[arg-type]


def names(host: PluginHost, hook: str) -> list[str]:
    return [impl.plugin_name for impl in host.implementations(hook)]


# ---------------------------------------------------------------------------------- loading


def test_defaults_load_without_configuration():
    host = make_host()
    assert host.names == list(DEFAULT_PLUGINS)
    assert names(host, "authenticate") == ["builtin_auth"]
    assert names(host, "join_request") == ["join_flood"]


def test_enabled_plugins_are_called_in_the_order_listed_defaults_last():
    host = make_host(
        **{
            "plugins.enabled": "topic_directory, text_filter, token_auth",
            "plugins.topic_directory.topics": '["books"]',
        }
    )
    assert set(host.names) == {*DEFAULT_PLUGINS, "topic_directory", "text_filter", "token_auth"}
    assert names(host, "normalize_topics") == ["topic_directory", "text_filter"]
    # builtin_auth is trylast: any other authentication plugin is asked first.
    assert names(host, "authenticate") == ["token_auth", "builtin_auth"]


def test_every_bundled_plugin_is_installed_as_an_entry_point():
    installed = manager_module.installed_plugins()
    for name, reference in manager_module.BUNDLED.items():
        assert name in installed, f"{name} has no entry point: reinstall (pip install -e .)"
        assert installed[name].value == reference


def test_unknown_plugin_names_what_is_installed():
    with pytest.raises(ConfigError) as caught:
        make_host(**{"plugins.enabled": "approvals"})
    message = str(caught.value)
    assert "plugins.enabled: no installed plugin named 'approvals'" in message
    assert "approval" in message and "webhooks" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"plugins.join_flood.knock_rate": "-1"},
            "plugins.join_flood.knock_rate: expected a number >= 0, got -1",
        ),
        (
            {"plugins.join_flood.knock_rat": "1"},
            "plugins.join_flood.knock_rat: unknown key (known: knock_rate, knock_burst",
        ),
        (
            {"plugins.enabled": "webhooks", "plugins.webhooks.urls": '["https://x"]'},
            "plugins.webhooks.secret: required",
        ),
        (
            {"plugins.enabled": "token_auth", "plugins.token_auth.jwt_algorithms": '["ROT13"]'},
            "plugins.token_auth.jwt_algorithms: unknown algorithms ['ROT13']",
        ),
        (
            {"plugins.enabled": "text_filter", "plugins.text_filter.action": '"shout"'},
            'plugins.text_filter.action: expected "deny" or "mask"',
        ),
        (
            {"plugins.enabled": "topic_directory", "plugins.topic_directory.strict": "true"},
            "plugins.topic_directory.strict: needs a list of topics",
        ),
    ],
)
def test_plugin_settings_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        make_host(**overrides)
    assert expected in str(caught.value)


def test_a_misspelled_hook_or_a_wrapper_is_refused():
    class Typo:
        @hookimpl
        def authentcate(self) -> None:
            pass

    class Wrapper:
        @hookimpl(wrapper=True)
        def authorize(self) -> Any:
            return (yield)

    class BadArgument:
        @hookimpl
        def authorize(self, identity: Any, nonsense: Any) -> None:
            pass

    host = make_host()
    with pytest.raises(ConfigError, match=r"plugins.typo: .*unknown hook 'authentcate'"):
        host.register(Typo(), "typo")
    with pytest.raises(ConfigError, match=r"plugins.wrapper: authorize is a wrapper"):
        host.register(Wrapper(), "wrapper")
    with pytest.raises(ConfigError, match=r"plugins.bad: .*nonsense"):
        host.register(BadArgument(), "bad")
    assert host.names == list(DEFAULT_PLUGINS)
    with pytest.raises(ConfigError, match="registered twice"):
        host.register(Typo, "builtin_auth")


def test_a_plugin_class_gets_its_own_api_and_settings(tmp_path):
    class Configured:
        def __init__(self, api: Any) -> None:
            self.api = api
            self.greeting = api.settings.text("greeting", "hi")

        @hookimpl
        def known_topics(self) -> list[str]:
            return [self.greeting]

    host = make_host(tmp_path, **{"plugins.configured.greeting": '"hello"'})
    plugin = host.register(Configured, "configured")
    assert plugin.greeting == "hello"
    assert plugin.api.name == "configured" and plugin.api.actor.user == "plugin:configured"
    assert plugin.api.data_dir == tmp_path / "plugins" / "configured"
    assert plugin.api.data_dir.is_dir()


class GreeterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A plugin's settings declared once, as a Struct (what ``api.settings.load`` reads)."""

    greeting: Annotated[str, msgspec.Meta(min_length=1)] = "hi"
    repeat: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    mood: Literal["calm", "cheerful"] = "calm"
    log_file: Path | None = None


class Greeter:
    def __init__(self, api: Any) -> None:
        self.settings = api.settings.load(GreeterSettings)


def test_a_plugin_reads_its_settings_into_a_struct(tmp_path):
    host = make_host(
        tmp_path,
        **{
            "plugins.greeter.greeting": '"hello"',
            "plugins.greeter.repeat": "3",
            "plugins.greeter.mood": '"Cheerful"',
            "plugins.greeter.log_file": '"~/greeter.log"',
        },
    )
    settings = host.register(Greeter, "greeter").settings
    assert settings == GreeterSettings(
        greeting="hello", repeat=3, mood="cheerful", log_file=Path("~/greeter.log").expanduser()
    )
    assert make_host().register(Greeter, "greeter").settings == GreeterSettings()


def test_struct_settings_errors_name_every_key_and_suggest_a_spelling(tmp_path):
    path = tmp_path / "salond.toml"
    path.write_text('[plugins.greeter]\ngreeting = ""\nrepeat = 9\nmood = "grumpy"\n')
    host = PluginHost(load_config(path), FakePipeline(), ServerStats())  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        host.register(Greeter, "greeter")
    assert caught.value.problems == [
        f"{path}: plugins.greeter.greeting: expected a non-empty string, got ''",
        f"{path}: plugins.greeter.repeat: expected an integer in 1..5, got 9",
        f"{path}: plugins.greeter.mood: expected one of calm, cheerful, got 'grumpy'",
    ]
    path.write_text('[plugins.greeter]\ngreting = "hey"\n')
    host = PluginHost(load_config(path), FakePipeline(), ServerStats())  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        host.register(Greeter, "greeter")
    assert str(caught.value) == (
        f"{path}: plugins.greeter.greting: unknown key"
        " (known: greeting, repeat, mood, log_file); did you mean 'greeting'?"
    )


def test_struct_settings_report_a_missing_required_key():
    class Required(msgspec.Struct, frozen=True):
        endpoint: str

    class NeedsEndpoint:
        def __init__(self, api: Any) -> None:
            api.settings.load(Required)

    with pytest.raises(ConfigError) as caught:
        make_host().register(NeedsEndpoint, "needs")
    assert str(caught.value) == (
        "configuration: plugins.needs.endpoint: missing, expected a string"
    )


# ---------------------------------------------------------------------------------- calling


async def test_sync_async_slow_and_raising_implementations():
    class Sync:
        @hookimpl
        def known_topics(self) -> list[str]:
            return ["sync"]

    class Async:
        @hookimpl
        async def known_topics(self) -> list[str]:
            await asyncio.sleep(0)
            return ["async"]

    class Slow:
        @hookimpl
        async def known_topics(self) -> list[str]:
            await asyncio.Event().wait()
            return ["never"]

    class Raising:
        @hookimpl
        def known_topics(self) -> list[str]:
            raise RuntimeError("broken")

    host = make_host(**{"plugins.plugin_timeout": "0.05"})
    for name, plugin in [("raising", Raising()), ("slow", Slow()), ("a", Async()), ("s", Sync())]:
        host.register(plugin, name)
    answers = await host.call("known_topics")
    assert [(name, type(v).__name__) for name, v in answers] == [
        ("s", "list"),
        ("a", "list"),
        ("slow", "Failure"),
        ("raising", "Failure"),
    ]
    assert answers[2][1] == Failure("slow", "no answer within 0.05 s")
    assert answers[3][1] == Failure("raising", "RuntimeError: broken")
    assert host.stats.plugin_errors == {"known_topics": 2}


async def test_a_plain_function_that_blocks_past_the_budget_is_a_failure(monkeypatch):
    ticks = iter([0.0, 0.01, 10.0, 13.5])

    class Blocking:
        @hookimpl
        def known_topics(self) -> list[str]:
            return ["late"]

    host = make_host(**{"plugins.plugin_timeout": "2"})
    host.register(Blocking(), "blocking")
    monkeypatch.setattr(manager_module, "clock", lambda: next(ticks))
    # Within the budget (10 ms): the answer counts.
    assert await host.call("known_topics") == [("blocking", ["late"])]
    # 3.5 s with the event loop held: discarded, counted, the safe default applies.
    (answer,) = await host.call("known_topics")
    assert answer == (
        "blocking",
        Failure(
            "blocking",
            "blocked salond for 3.50 s (budget 2 s): do slow work in an async implementation",
        ),
    )
    assert host.stats.plugin_errors == {"known_topics": 1}


async def test_refusals_raised_by_plugins_become_deny():
    from salon.daemon.core import CoreError
    from salon.daemon.wire.messages import ErrorCode

    class Raiser:
        @hookimpl
        def raise_hand(self, identity: Identity) -> None:
            raise CoreError(ErrorCode.RATE_LIMITED, "slow down")

    host = make_host()
    host.register(Raiser(), "raiser")
    answers = await host.call("raise_hand", identity=None, room="r")
    assert answers == [("raiser", Deny("slow down", ErrorCode.RATE_LIMITED))]
    assert host.stats.plugin_errors == {}


async def test_repeated_failures_are_counted_every_time_but_logged_sparingly(caplog):
    class Raising:
        @hookimpl
        def known_topics(self) -> list[str]:
            raise RuntimeError("broken")

    host = make_host()
    host.register(Raising(), "raising")
    with caplog.at_level(logging.WARNING, logger="salon.hooks"):
        for _ in range(5):
            await host.call("known_topics")
    assert host.stats.plugin_errors["known_topics"] == 5
    reports = [r for r in caplog.records if "failed in known_topics" in r.getMessage()]
    assert len(reports) == 1 and reports[0].exc_info is not None


async def test_authentication_fails_closed():
    class Broken:
        @hookimpl(tryfirst=True)
        def authenticate(self) -> Any:
            raise RuntimeError("LDAP is down")

    class Impostor:
        @hookimpl(tryfirst=True)
        def authenticate(self, display_name: str) -> Identity:
            return Identity("root", display_name, operator=True)

    for plugin in (Broken(), Impostor()):
        host = make_host()
        host.register(plugin, "auth")
        with pytest.raises(AuthError, match="authentication is unavailable"):
            await host.authenticator.authenticate({"guest_key": "a" * 44}, "Ada", "127.0.0.1")
        assert host.stats.plugin_errors["authenticate"] == 1
    # Without them, the default plugin answers as before.
    identity = await make_host().authenticator.authenticate(
        {"guest_key": "a" * 44}, "Ada", "127.0.0.1"
    )
    assert identity.user.startswith("guest-")


# ---------------------------------------------------------------------------------- observers


async def test_observers_run_later_in_order_and_a_stuck_plugin_delays_only_itself():
    seen: list[tuple[str, str]] = []

    class Stuck:
        @hookimpl
        async def room_created(self, room: str) -> None:
            seen.append(("stuck", room))
            await asyncio.Event().wait()

    class Quick:
        @hookimpl
        def room_created(self, room: str) -> None:
            seen.append(("quick", room))

    host = make_host(**{"plugins.plugin_timeout": "5"})
    host.register(Stuck(), "stuck")
    host.register(Quick(), "quick")
    host.observe(RoomCreated("early", "ada"))  # before start: not delivered
    await host.start()
    try:
        host.observe(RoomCreated("a", "ada"))
        host.observe(RoomCreated("b", "ada"))
        assert seen == []  # nothing ran inside the core's event pump
        for _ in range(100):
            await asyncio.sleep(0)
        assert [room for who, room in seen if who == "quick"] == ["a", "b"]
        assert [room for who, room in seen if who == "stuck"] == ["a"]
    finally:
        host.timeout = 0.01
        await host.stop()


async def test_observer_backlog_is_bounded(monkeypatch):
    monkeypatch.setattr(manager_module, "OBSERVER_BACKLOG", 3)

    class Stuck:
        @hookimpl
        async def room_created(self) -> None:
            await asyncio.Event().wait()

    host = make_host(**{"plugins.plugin_timeout": "0.01"})
    host.register(Stuck(), "stuck")
    await host.start()
    for index in range(10):
        host.observe(RoomCreated(f"r{index}", "ada"))
    assert host.stats.drops["plugin_backlog"] == 7
    assert host.stats.plugin_errors["room_created"] == 7
    await host.stop()


async def test_audio_levels_are_sampled_only_with_a_subscriber():
    host = make_host()
    assert host._level_task is None
    api = host.apis["join_flood"]
    api.subscribe_audio_levels("stage")
    assert host._level_task is not None
    api.unsubscribe_audio_levels("stage")
    await asyncio.wait_for(host._level_task, 2)  # the sampler ends with its last subscriber
    await host.stop()

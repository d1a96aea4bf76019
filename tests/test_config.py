"""salond configuration: defaults, the example file, validation messages, overrides, paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from salon.daemon.config import (
    ALPN,
    Config,
    ConfigError,
    PluginsConfig,
    ServerConfig,
    load_config,
    resolve_paths,
)

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "salond.toml"


def write(tmp_path: Path, text: str, name: str = "salond.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path | None, overrides: dict[str, object] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def section_fields() -> dict[str, list[str]]:
    """Section name -> its field names, for every section of Config."""
    defaults = Config()
    return {
        f.name: [g.name for g in msgspec.structs.fields(getattr(defaults, f.name))]
        for f in msgspec.structs.fields(Config)
        if f.name != "source"
    }


# -- defaults and the example file


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.source is None
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 4460
    assert config.server.state_dir == Path("state")
    assert config.server.max_datagram_size == 1100
    assert config.server.public_name == "localhost"
    assert config.tls.certificate is None and config.tls.private_key is None
    assert config.auth.allow_guests is True and dict(config.auth.tokens) == {}
    assert config.limits.knock_ttl == 120.0 and config.limits.outlet_queue == 16
    assert config.admin.enabled and config.admin.socket is None
    assert not config.metrics.enabled and config.metrics.port == 9464
    assert not config.demo.enabled and config.demo.room == "lobby" and config.demo.audio is None
    assert config.plugins.enabled == () and config.plugins.plugin_timeout == 2.0
    assert config.logging.level == "info" and config.logging.json is False
    assert config.alpn == ALPN == "salon/1"


def test_sample_equals_embedded_defaults() -> None:
    config = load_config(SAMPLE)
    assert config == Config()
    assert config.source == SAMPLE


def test_sample_lists_exactly_every_key() -> None:
    raw = tomllib.loads(SAMPLE.read_text())
    expected = section_fields()
    assert list(raw) == list(expected), "sections missing, extra or out of order"
    for section, names in expected.items():
        written = set(raw[section])
        if section == "plugins":
            # Per-plugin [plugins.<name>] tables are free-form; the file shows one in a comment.
            names = [n for n in names if n != "settings"]
            assert "# [plugins." in SAMPLE.read_text()
        assert written == set(names), section


def test_every_dataclass_field_appears_in_sample() -> None:
    text = SAMPLE.read_text()
    for section, names in section_fields().items():
        assert f"\n[{section}]\n" in text, section
        for name in names:
            if (section, name) == ("auth", "tokens"):
                assert "\n[auth.tokens]\n" in text
            elif (section, name) == ("plugins", "settings"):
                assert "# [plugins.<name>]" in text or "[plugins.<name>]" in text
            else:
                assert f"\n{name} = " in text, f"{section}.{name}"


def test_every_key_in_sample_is_explained() -> None:
    """Each key (or group of adjacent keys) follows a comment, like LiveKit's config-sample."""
    lines = SAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith(("#", "[")):
            before = number - 1
            while before >= 0 and lines[before] and not lines[before].startswith("#"):
                before -= 1  # a group of related keys shares one comment
            assert before >= 0 and lines[before].startswith("#"), f"line {number + 1}: {line}"


# -- reading files


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 5000\n\n[limits]\nknock_ttl = 30\n")
    config = load_config(path)
    assert config.server.port == 5000
    assert config.limits.knock_ttl == 30.0 and isinstance(config.limits.knock_ttl, float)
    assert config.server.host == "127.0.0.1"
    assert config.source == path


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert error_of(path) == f"{path}: configuration file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in error_of(tmp_path)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 4460\nhost = \n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid TOML:")
    assert "line 3" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[demo]\ntitle = "caf\xe9"\n')
    assert error_of(path) == f"{path}: line 2: not valid UTF-8"


def test_bad_value_message_names_file_key_and_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", '[limits]\nknock_ttl = "abc"\n')
    assert error_of(Path("conf/salond.toml")) == (
        "conf/salond.toml: limits.knock_ttl: expected a positive number, got 'abc'"
    )


def test_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 1\n")
    message = error_of(path)
    assert message.startswith(
        f"{path}: server.prot: unknown key (known: host, port, state_dir, idle_timeout,"
    )
    assert message.endswith("did you mean 'port'?")


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[sever]\nport = 1\n")
    message = error_of(path)
    assert message.startswith(f"{path}: sever: unknown section (known: server, tls, auth,")
    assert "did you mean 'server'?" in message


def test_top_level_key_is_unknown_section(tmp_path: Path) -> None:
    assert "port: unknown section" in error_of(write(tmp_path, "port = 1\n"))


def test_section_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "server = 5\n")
    assert error_of(path) == f"{path}: server: expected a table, got 5"


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = -1\nhost = ""\n\n[logging]\nlevel = "loud"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 3
    assert all(line.startswith(f"{path}: ") for line in str(info.value).splitlines())


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nport = -1", "server.port: expected an integer in 0..65535 (0 picks any"),
        ("[server]\nport = 65536", "server.port: expected an integer in 0..65535"),
        ("[server]\nport = true", "server.port: expected an integer in 0..65535"),
        ("[server]\nport = 4460.0", "got 4460.0"),
        ('[server]\nport = "4460"', "got '4460'"),
        ("[server]\nmax_datagram_size = 199", "expected an integer in 200..1180, got 199"),
        ("[server]\nmax_datagram_size = 1181", "expected an integer in 200..1180, got 1181"),
        ("[server]\nidle_timeout = 0", "server.idle_timeout: expected a positive number, got 0"),
        ("[server]\nidle_timeout = inf", "expected a positive number, got inf"),
        ("[server]\nidle_timeout = nan", "expected a positive number, got nan"),
        ("[server]\ndrain_timeout = -1", "expected a non-negative number, got -1"),
        ('[server]\nstate_dir = ""', "server.state_dir: expected a non-empty path, got ''"),
        ('[server]\nhost = ""', "server.host: expected a non-empty string, got ''"),
        ('[server]\npublic_name = "bad name"', "expected a DNS name or an IP address"),
        ('[server]\npublic_name = "-x.org"', "expected a DNS name or an IP address"),
        ("[limits]\noutlet_queue = 1", "limits.outlet_queue: expected an integer in 2..1024"),
        ("[limits]\noutlet_queue = 1025", "expected an integer in 2..1024"),
        ("[limits]\nmax_sessions = 0", "limits.max_sessions: expected a positive integer, got 0"),
        ("[limits]\nmessage_rate = -5", "limits.message_rate: expected a positive number"),
        ("[limits]\nowner_grace = -1", "limits.owner_grace: expected a non-negative number"),
        ('[auth]\nallow_guests = "yes"', "auth.allow_guests: expected true or false, got 'yes'"),
        ("[auth]\ntokens = 5", "auth.tokens: expected a table of token = user id strings"),
        ('[logging]\nlevel = "loud"', "expected one of debug, info, warning, error, got 'loud'"),
        ('[plugins]\nenabled = "x"', "plugins.enabled: expected a list of distinct non-empty"),
        ('[plugins]\nenabled = ["a", "a"]', "expected a list of distinct non-empty strings"),
        ("[plugins]\nenabled = [1]", "expected a list of distinct non-empty strings"),
        ("[metrics]\nport = 99999", "metrics.port: expected an integer in 0..65535"),
        ("[admin]\nsocket = 1", "admin.socket: expected a path or an empty string, got 1"),
    ],
)
def test_invalid_values(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path, toml + "\n")
    assert message in error_of(path)


def test_every_key_says_what_it_expects() -> None:
    """A key added to a section gets its error text from its type: none is left wordless."""
    for section, names in section_fields().items():
        for name in names:
            if (section, name) == ("plugins", "settings"):
                continue  # not a key: the [plugins.<name>] tables
            message = error_of(None, {f"{section}.{name}": [{}]})
            assert message.startswith(f"command line: {section}.{name}: expected "), message
            assert message.endswith(", got [{}]") and "a valid value" not in message, message


@pytest.mark.parametrize(
    ("toml", "attribute", "value"),
    [
        ("[server]\nport = 0", ("server", "port"), 0),
        ("[server]\nmax_datagram_size = 1180", ("server", "max_datagram_size"), 1180),
        ('[server]\npublic_name = "::1"', ("server", "public_name"), "::1"),
        (
            '[server]\npublic_name = "Salon.Example.org"',
            ("server", "public_name"),
            "Salon.Example.org",
        ),
        ("[server]\ndrain_timeout = 0", ("server", "drain_timeout"), 0.0),
        ('[logging]\nlevel = "DEBUG"', ("logging", "level"), "debug"),
        ('[plugins]\nenabled = ["a", "b"]', ("plugins", "enabled"), ("a", "b")),
    ],
)
def test_valid_edge_values(
    tmp_path: Path, toml: str, attribute: tuple[str, str], value: object
) -> None:
    config = load_config(write(tmp_path, toml + "\n"))
    assert getattr(getattr(config, attribute[0]), attribute[1]) == value


# -- tls, tokens, plugins


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = write(tmp_path, "x", "cert.pem")
    path = write(tmp_path, f'[tls]\ncertificate = "{cert}"\n')
    assert error_of(path) == (
        f"{path}: tls.private_key: required when tls.certificate is set"
        " (set both, or neither for a self-signed certificate)"
    )
    path = write(tmp_path, f'[tls]\nprivate_key = "{cert}"\n')
    assert error_of(path).startswith(f"{path}: tls.certificate: required when tls.private_key")


def test_bitrate_bounds_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmin_bitrate = 48000\n")
    assert error_of(path) == (
        f"{path}: limits.min_bitrate: 48000 is above limits.max_bitrate (40000)"
    )
    path = write(tmp_path, "[limits]\nmax_bitrate = 1000\n")
    assert "limits.max_bitrate" in error_of(path)


def test_tls_files_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "x", "cert.pem")
    path = write(tmp_path, '[tls]\ncertificate = "cert.pem"\nprivate_key = "missing.key"\n')
    assert error_of(path) == f"{path}: tls.private_key: file not found: 'missing.key'"


def test_tls_files_relative_to_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "x", "cert.pem")
    write(tmp_path, "x", "key.pem")
    path = write(tmp_path, '[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n')
    config = load_config(path)
    assert config.tls.certificate == Path("cert.pem")
    resolved = resolve_paths(config)
    assert resolved.tls.certificate == tmp_path / "cert.pem"
    assert resolved.tls.private_key == tmp_path / "key.pem"


def test_demo_audio_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, '[demo]\naudio = "nowhere.wav"\n')
    assert error_of(path) == f"{path}: demo.audio: file not found: 'nowhere.wav'"


def test_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth.tokens]\n"s3cret-token" = "alice"\nother = "bob"\n')
    config = load_config(path)
    assert dict(config.auth.tokens) == {"s3cret-token": "alice", "other": "bob"}
    with pytest.raises(TypeError):
        config.auth.tokens["x"] = "y"  # type: ignore[index, unused-ignore]
    assert "s3cret" not in repr(config)


def test_token_user_ids_checked_without_revealing_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth.tokens]\n"s3cret-token" = "guest-0123456789ab"\n')
    message = error_of(path)
    assert "auth.tokens: expected a user id for token 's3cr...' not starting with 'guest-'" in (
        message
    )
    assert "s3cret-token" not in message
    path = write(tmp_path, '[auth.tokens]\n"s3cret-token" = 7\n')
    assert "expected a non-empty user id for token 's3cr...', got 7" in error_of(path)


def test_plugin_tables_kept_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[plugins]\nenabled = ["words"]\n\n[plugins.words]\nlist = ["spam"]\nlimit = 3\n'
        "\n[plugins.words.nested]\nx = 1\n",
    )
    config = load_config(path)
    assert config.plugins.enabled == ("words",)
    assert dict(config.plugins.settings["words"]) == {
        "list": ["spam"],
        "limit": 3,
        "nested": {"x": 1},
    }


def test_plugins_unknown_plain_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins]\ntimeout = 2\n")
    message = error_of(path)
    assert message.startswith(
        f"{path}: plugins.timeout: unknown key (known: enabled, plugin_timeout)"
    )
    assert "[plugins.<name>]" in message


# -- overrides


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 5000\n")
    config = load_config(path, {"server.port": 4461, "logging.level": "debug"})
    assert config.server.port == 4461 and config.logging.level == "debug"


def test_overrides_without_a_file() -> None:
    config = load_config(None, {"server.port": 0, "demo.enabled": True})
    assert config.server.port == 0 and config.demo.enabled
    assert config.source is None


def test_string_overrides_are_converted() -> None:
    config = load_config(
        None,
        {
            "server.port": "4470",
            "server.idle_timeout": "12.5",
            "auth.allow_guests": "false",
            "metrics.enabled": "yes",
            "plugins.enabled": "a, b",
            "server.host": "0.0.0.0",
            "server.state_dir": "/var/lib/salon",
            "tls.certificate": "",
        },
    )
    assert config.server.port == 4470
    assert config.server.idle_timeout == 12.5
    assert config.auth.allow_guests is False and config.metrics.enabled is True
    assert config.plugins.enabled == ("a", "b")
    assert config.server.host == "0.0.0.0"
    assert config.server.state_dir == Path("/var/lib/salon")
    assert load_config(None, {"plugins.enabled": '["x"]'}).plugins.enabled == ("x",)
    assert load_config(None, {"plugins.enabled": ""}).plugins.enabled == ()


def test_override_errors_name_the_command_line() -> None:
    assert error_of(None, {"limits.knock_ttl": "abc"}) == (
        "command line: limits.knock_ttl: expected a positive number, got 'abc'"
    )
    assert error_of(None, {"server.prot": 1}).startswith(
        "command line: server.prot: unknown key (known: host, port,"
    )
    assert error_of(None, {"nope.key": 1}).startswith("command line: nope: unknown section")
    assert error_of(None, {"port": 1}) == (
        "command line: port: expected a dotted key like server.port"
    )


def test_file_errors_still_name_the_file_next_to_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = -1\n")
    message = error_of(path, {"logging.level": "loud"})
    assert f"{path}: server.port:" in message
    assert "command line: logging.level:" in message
    assert load_config(path, {"server.port": 1}).server.port == 1


def test_token_and_plugin_overrides() -> None:
    config = load_config(None, {"auth.tokens.tok.with.dots": "alice", "plugins.words.limit": "3"})
    assert dict(config.auth.tokens) == {"tok.with.dots": "alice"}
    assert dict(config.plugins.settings["words"]) == {"limit": 3}


# -- the objects


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc, unused-ignore]
    with pytest.raises(AttributeError):
        config.server = ServerConfig()  # type: ignore[misc, unused-ignore]


def test_equality_ignores_source(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == load_config(None)
    assert load_config(None, {"server.port": 1}) != Config()


def test_plugins_settings_default_is_empty_mapping() -> None:
    assert dict(PluginsConfig().settings) == {}
    assert ConfigError("x").problems == ["x"]
    assert issubclass(ConfigError, ValueError)


# -- paths


def test_state_dir_relative_defaults() -> None:
    config = Config()
    assert config.tls_dir == Path("state/tls")
    assert config.admin_socket == Path("state/admin.sock")
    custom = load_config(None, {"admin.socket": "/run/salon/admin.sock"})
    assert custom.admin_socket == Path("/run/salon/admin.sock")


def test_resolve_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = resolve_paths(load_config(None, {"server.state_dir": "data/../st"}))
    assert resolved.server.state_dir == tmp_path / "st"
    assert resolved.admin.socket == tmp_path / "st" / "admin.sock"
    assert resolved.tls_dir == tmp_path / "st" / "tls"
    assert resolved.admin_socket == resolved.admin.socket
    assert resolved.tls.certificate is None and resolved.demo.audio is None
    assert resolve_paths(resolved) == resolved


def test_resolve_paths_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(None, {"server.state_dir": "~/salon"})
    assert config.server.state_dir == tmp_path / "salon"


def test_resolve_paths_refuses_too_long_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    config = load_config(None, {"server.state_dir": str(deep)})
    with pytest.raises(ConfigError, match=r"configuration: admin.socket: path too long"):
        resolve_paths(config)
    disabled = load_config(None, {"server.state_dir": str(deep), "admin.enabled": False})
    assert resolve_paths(disabled).server.state_dir == deep
    assert os.path.isabs(resolve_paths(disabled).admin_socket)


def test_check_config_loads_plugins_and_names_a_bad_plugin_setting(tmp_path, capsys):
    from salon.daemon.app import main

    path = tmp_path / "salond.toml"
    path.write_text('[plugins]\nenabled = ["text_filter"]\n[plugins.text_filter]\nnonsense = 1\n')
    assert main(["--check-config", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "plugins.text_filter.nonsense" in err
    path.write_text('[plugins]\nenabled = ["text_filter"]\n[plugins.text_filter]\nwords = ["x"]\n')
    assert main(["--check-config", "-c", str(path)]) == 0
    assert "configuration OK" in capsys.readouterr().out

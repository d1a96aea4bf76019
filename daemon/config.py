"""salond configuration: typed, frozen, validated, with embedded defaults.

``load_config(None)`` gives the defaults, so salond runs with no file at all. A file only needs
the keys it changes; ``conf/salond.toml`` lists every key with its default and an explanation.
Command-line overrides are dotted keys (``{"server.port": 4460}``) applied on top of the file.

Every problem is a :class:`ConfigError` whose lines read ``<file>: <dotted.key>: <what is
wrong>``, so an operator can fix the file without reading this module. Paths are kept as
written (relative ones are relative to the current directory); :func:`resolve_paths` makes them
absolute and fills in the defaults that live under ``server.state_dir``.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only below Python 3.11
    import tomli as tomllib

__all__ = [
    "ALPN",
    "AdminConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DemoConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "PluginsConfig",
    "ServerConfig",
    "TlsConfig",
    "load_config",
    "resolve_paths",
]

ALPN = "salon/1"
"""The QUIC application protocol; fixed by the wire protocol, so not a configuration key."""

GUEST_PREFIX = "guest-"
"""User ids starting with this are derived from guest keys; static tokens may not claim them."""

COMMAND_LINE = "command line"
"""How errors name the origin of a value given as an override rather than in a file."""

# Linux limit for sun_path, including the terminating NUL.
_UNIX_SOCKET_PATH_MAX = 107

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class ConfigError(ValueError):
    """The configuration is unusable; each line of the message names the file and the key."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# -- value checks ---------------------------------------------------------------------------
#
# Each setting carries a check in its field metadata. A check converts a raw TOML value to the
# field's type or raises _Invalid. ``from_text`` turns a command-line string into the raw value
# the check expects (``"4460"`` -> 4460); values from TOML files are never coerced.


class _Invalid(Exception):
    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Check:
    expected = "a value"

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        return text


class _Text(_Check):
    expected = "a non-empty string"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(self.expected, value)
        return value


class _HostName(_Check):
    expected = "a DNS name or an IP address"

    def __call__(self, value: Any) -> str:
        if isinstance(value, str):
            try:
                ipaddress.ip_address(value)
                return value
            except ValueError:
                pass
            labels = value.split(".")
            if len(value) <= 253 and all(_HOST_LABEL.match(label) for label in labels):
                return value
        raise _Invalid(self.expected, value)


class _Choice(_Check):
    def __init__(self, *options: str) -> None:
        self.options = options
        self.expected = "one of " + ", ".join(options)

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and value.lower() in self.options:
            return value.lower()
        raise _Invalid(self.expected, value)


class _Integer(_Check):
    def __init__(self, low: int, high: int | None = None, note: str = "") -> None:
        self.low, self.high = low, high
        if high is not None:
            self.expected = f"an integer in {low}..{high}"
        elif low == 1:
            self.expected = "a positive integer"
        else:
            self.expected = f"an integer >= {low}"
        self.expected += note

    def __call__(self, value: Any) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < self.low
            or (self.high is not None and value > self.high)
        ):
            raise _Invalid(self.expected, value)
        return value

    def from_text(self, text: str) -> Any:
        try:
            return int(text.strip())
        except ValueError:
            return text


class _Number(_Check):
    """A finite number of seconds, events per second, ...; positive unless ``zero`` is allowed."""

    def __init__(self, *, zero: bool = False) -> None:
        self.zero = zero
        self.expected = "a non-negative number" if zero else "a positive number"

    def __call__(self, value: Any) -> float:
        if not _is_number(value) or not math.isfinite(value):
            raise _Invalid(self.expected, value)
        if value < 0 or (value == 0 and not self.zero):
            raise _Invalid(self.expected, value)
        return float(value)

    def from_text(self, text: str) -> Any:
        try:
            return float(text.strip())
        except ValueError:
            return text


class _Boolean(_Check):
    expected = "true or false"
    _TEXT = {"true": True, "yes": True, "on": True, "1": True}
    _TEXT.update({"false": False, "no": False, "off": False, "0": False})

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(self.expected, value)
        return value

    def from_text(self, text: str) -> Any:
        return self._TEXT.get(text.strip().lower(), text)


class _PathCheck(_Check):
    """A filesystem path; ``~`` is expanded. ``optional``: the empty string means "not set"."""

    def __init__(self, *, optional: bool) -> None:
        self.optional = optional
        self.expected = "a path or an empty string" if optional else "a non-empty path"

    def __call__(self, value: Any) -> Path | None:
        if not isinstance(value, str):
            raise _Invalid(self.expected, value)
        if not value:
            if self.optional:
                return None
            raise _Invalid(self.expected, value)
        return Path(value).expanduser()


class _Names(_Check):
    expected = "a list of distinct non-empty strings"

    def __call__(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _Invalid(self.expected, value)
        if len(set(value)) != len(value):
            raise _Invalid(self.expected, value)
        return tuple(value)

    def from_text(self, text: str) -> Any:
        # "--set plugins.enabled=a,b" as well as a TOML array literal.
        if text.strip().startswith("["):
            return _toml_value(text)
        return [part.strip() for part in text.split(",") if part.strip()]


class _Tokens(_Check):
    """``[auth.tokens]``: static token -> user id."""

    expected = "a table of token = user id strings"

    def __call__(self, value: Any) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            raise _Invalid(self.expected, value)
        for token, user in value.items():
            # The token is a secret: name it by a short prefix only.
            shown = repr(token[:4] + "...") if len(token) > 4 else repr(token)
            if not token.strip():
                raise _Invalid("non-empty tokens", token)
            if not isinstance(user, str) or not user.strip():
                raise _Invalid(f"a non-empty user id for token {shown}", user)
            if user.startswith(GUEST_PREFIX):
                raise _Invalid(
                    f"a user id for token {shown} not starting with {GUEST_PREFIX!r}"
                    " (reserved for guests)",
                    user,
                )
        return MappingProxyType(dict(value))


class _PluginTables(_Check):
    """``[plugins.<name>]`` tables, kept as read-only mappings for the plugins to validate."""

    expected = "a table"

    def __call__(self, value: Any) -> Mapping[str, Mapping[str, Any]]:
        return MappingProxyType({name: MappingProxyType(dict(t)) for name, t in value.items()})


def _toml_value(text: str) -> Any:
    """A command-line value read as a TOML literal when it is one, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _rule(check: _Check) -> dict[str, _Check]:
    return {"check": check}


def _no_entries() -> Mapping[str, Any]:
    return MappingProxyType({})


# -- the configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where salond listens and how its QUIC connections behave."""

    host: str = field(default="127.0.0.1", metadata=_rule(_Text()))
    """Address to bind the UDP socket to (``0.0.0.0`` / ``::`` for every interface)."""
    port: int = field(default=4460, metadata=_rule(_Integer(0, 65535, " (0 picks any free port)")))
    """UDP port; 0 lets the system pick a free one (tests)."""
    state_dir: Path = field(default=Path("state"), metadata=_rule(_PathCheck(optional=False)))
    """Directory for the database, generated TLS material and the admin socket."""
    idle_timeout: float = field(default=30.0, metadata=_rule(_Number()))
    """Seconds without any packet after which a QUIC connection is dropped."""
    max_datagram_size: int = field(default=1100, metadata=_rule(_Integer(200, 1180)))
    """Largest QUIC DATAGRAM payload salond sends or accepts, in bytes."""
    drain_timeout: float = field(default=5.0, metadata=_rule(_Number(zero=True)))
    """On SIGTERM: seconds to tell clients the server is going away before closing."""
    public_name: str = field(default="localhost", metadata=_rule(_HostName()))
    """Name clients use to reach the server: in the self-signed certificate and join lines."""


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: certificate and key files; both unset means a generated self-signed pair."""

    certificate: Path | None = field(default=None, metadata=_rule(_PathCheck(optional=True)))
    """PEM certificate (chain, leaf first); None: self-signed in ``state_dir/tls``."""
    private_key: Path | None = field(default=None, metadata=_rule(_PathCheck(optional=True)))
    """PEM private key matching ``certificate``, unencrypted."""


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: who may connect."""

    allow_guests: bool = field(default=True, metadata=_rule(_Boolean()))
    """Admit clients without credentials under a stable identity derived from their key."""
    # repr=False: the tokens are secrets, and configurations end up in logs.
    tokens: Mapping[str, str] = field(
        default_factory=_no_entries, metadata=_rule(_Tokens()), repr=False
    )
    """``[auth.tokens]``: static token -> user id."""


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: timeouts, queue bounds, quotas and rate limits."""

    knock_ttl: float = field(default=120.0, metadata=_rule(_Number()))
    """Seconds a knock (request to join an approval room) waits before it expires."""
    owner_grace: float = field(default=60.0, metadata=_rule(_Number(zero=True)))
    """Seconds a disconnected owner keeps the room before ownership passes on."""
    outlet_queue: int = field(default=16, metadata=_rule(_Integer(2, 1024)))
    """Datagrams queued per listener before the oldest audio is dropped."""
    max_rooms_per_user: int = field(default=5, metadata=_rule(_Integer(1)))
    """Open rooms one user may own at a time."""
    max_sessions: int = field(default=10000, metadata=_rule(_Integer(1)))
    """Concurrent client connections; further handshakes are refused."""
    message_rate: float = field(default=50.0, metadata=_rule(_Number()))
    """Control messages per second one session may send on average."""
    message_burst: int = field(default=100, metadata=_rule(_Integer(1)))
    """Control messages one session may send at once above the average rate."""
    knock_rate: float = field(default=10.0, metadata=_rule(_Number()))
    """Knocks per second accepted from one client address."""
    max_speakers_cap: int = field(default=100, metadata=_rule(_Integer(1)))
    """Upper bound for any room's speaker limit."""


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the local admin API used by salon-admin and salonctl."""

    enabled: bool = field(default=True, metadata=_rule(_Boolean()))
    """Serve the admin API."""
    socket: Path | None = field(default=None, metadata=_rule(_PathCheck(optional=True)))
    """Unix socket path; None: ``state_dir/admin.sock``."""


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus-style metrics over HTTP."""

    enabled: bool = field(default=False, metadata=_rule(_Boolean()))
    """Serve metrics."""
    host: str = field(default="127.0.0.1", metadata=_rule(_Text()))
    """TCP address of the metrics endpoint."""
    port: int = field(default=9464, metadata=_rule(_Integer(0, 65535, " (0 picks any free port)")))
    """TCP port of the metrics endpoint."""


@dataclass(frozen=True)
class DemoConfig:
    """``[demo]``: an always-open room where a bot speaks, to try a client right away."""

    enabled: bool = field(default=False, metadata=_rule(_Boolean()))
    """Create the demo room and start its bot."""
    room: str = field(default="lobby", metadata=_rule(_Text()))
    """Id of the demo room."""
    title: str = field(default="Salon demo lobby", metadata=_rule(_Text()))
    """Title of the demo room."""
    audio: Path | None = field(default=None, metadata=_rule(_PathCheck(optional=True)))
    """Sound file the bot plays in a loop; None: generated speech or tones."""
    bot_name: str = field(default="Demo bot", metadata=_rule(_Text()))
    """Display name of the bot."""


@dataclass(frozen=True)
class PluginsConfig:
    """``[plugins]``: which plugins run, and their own ``[plugins.<name>]`` tables."""

    enabled: tuple[str, ...] = field(default=(), metadata=_rule(_Names()))
    """Names of the installed plugins to load (entry points group ``salon.plugins``)."""
    plugin_timeout: float = field(default=2.0, metadata=_rule(_Number()))
    """Seconds an asynchronous hook may take before salond gives up on it."""
    settings: Mapping[str, Mapping[str, Any]] = field(
        default_factory=_no_entries, metadata=_rule(_PluginTables())
    )
    """``[plugins.<name>]`` tables by plugin name, as written (each plugin validates its own)."""


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``."""

    level: str = field(default="info", metadata=_rule(_Choice("debug", "info", "warning", "error")))
    """Least severe level logged."""
    json: bool = field(default=False, metadata=_rule(_Boolean()))
    """One JSON object per line instead of human-readable lines."""


@dataclass(frozen=True)
class Config:
    """The whole salond configuration. ``Config()`` is the embedded defaults."""

    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = field(default=None, compare=False)
    """The file this was loaded from; None for defaults and overrides only."""

    @property
    def alpn(self) -> str:
        return ALPN

    @property
    def tls_dir(self) -> Path:
        """Where the self-signed certificate lives when ``[tls]`` names no files."""
        return self.server.state_dir / "tls"

    @property
    def admin_socket(self) -> Path:
        """The admin API's Unix socket: ``admin.socket`` or ``state_dir/admin.sock``."""
        return self.admin.socket or self.server.state_dir / "admin.sock"


def _sections() -> dict[str, type]:
    """Section name -> section dataclass, in file order."""
    defaults = Config()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(Config) if f.name != "source"}


# -- loading --------------------------------------------------------------------------------

_Origin = Callable[[str, str], str]
"""(section, key) -> the file or "command line" the value came from, for error messages."""


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (None: defaults only), apply dotted-key ``overrides``, validate.

    String override values are converted to the key's type (``"4460"`` -> 4460,
    ``"false"`` -> False, ``"a,b"`` -> ("a", "b")), so values typed on a command line can be
    passed as they are. ``auth.tokens.<token>`` and ``plugins.<name>.<key>`` set one entry.
    """
    label = str(path) if path is not None else "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    in_file = set(raw)
    overridden: set[tuple[str, str]] = set()
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        try:
            overridden.add(_apply_override(raw, key, value))
        except ConfigError as exc:
            problems.extend(exc.problems)

    def origin(section: str, key: str) -> str:
        """Where a value came from, to name it in an error."""
        if key and (section, key) in overridden:
            return COMMAND_LINE
        if not key and section not in in_file:
            return COMMAND_LINE
        return label

    sections = _sections()
    built: dict[str, Any] = {}
    for name in raw:
        if name not in sections:
            problems.append(f"{origin(name, '')}: {name}: unknown section{_known(name, sections)}")
    for name, cls in sections.items():
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(f"{origin(name, '')}: {name}: expected a table, got {_show(table)}")
            continue
        try:
            built[name] = _build_section(name, cls, table, origin)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    config = Config(**built, source=Path(path) if path is not None else None)
    _check_relations(config, origin)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        # The message already says "(at line N, column M)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _apply_override(raw: dict[str, Any], key: str, value: Any) -> tuple[str, str]:
    """Set ``section.key[.sub]`` in ``raw``; returns (section, key)."""
    # A token or a plugin setting may itself contain dots: split at most twice.
    parts = key.split(".", 2)
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{COMMAND_LINE}: {key}: expected a dotted key like server.port")
    section, name = parts[0], parts[1]
    cls = _sections().get(section)
    check = _field_check(cls, name) if cls is not None else None
    if isinstance(value, str):
        if check is not None and len(parts) == 2:
            value = check.from_text(value)
        elif section == "plugins" and len(parts) == 3:
            value = _toml_value(value)
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{COMMAND_LINE}: {key}: {section} is not a table in the file")
    if len(parts) == 2:
        table[name] = value
    else:
        sub = table.setdefault(name, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{COMMAND_LINE}: {key}: {section}.{name} is not a table")
        sub[parts[2]] = value
    return section, name


def _field_check(cls: type, name: str) -> _Check | None:
    for f in fields(cls):
        if f.name == name:
            check: _Check = f.metadata["check"]
            return check
    return None


def _build_section(name: str, cls: type, table: Mapping[str, Any], origin: _Origin) -> Any:
    checks = {f.name: f.metadata["check"] for f in fields(cls)}
    problems: list[str] = []
    values: dict[str, Any] = {}
    plugin_tables: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{origin(name, key)}: {name}.{key}"
        check = checks.get(key)
        if check is None or isinstance(check, _PluginTables):
            if cls is PluginsConfig and isinstance(value, Mapping):
                plugin_tables[key] = value
                continue
            hint = (
                "; per-plugin settings go in [plugins.<name>] tables"
                if cls is PluginsConfig
                else ""
            )
            problems.append(f"{where}: unknown key{_known(key, _public_keys(cls))}{hint}")
            continue
        try:
            values[key] = check(value)
        except _Invalid as exc:
            problems.append(f"{where}: {exc}")
    if cls is PluginsConfig:
        values["settings"] = _PluginTables()(plugin_tables)
    if problems:
        raise ConfigError(problems)
    return cls(**values)


def _public_keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if not isinstance(f.metadata["check"], _PluginTables)]


def _known(name: str, known: Any) -> str:
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known: {', '.join(names)}){suggestion}"


def _check_relations(config: Config, origin: _Origin) -> None:
    """Checks that involve several keys or the filesystem."""
    problems: list[str] = []
    tls = config.tls
    if (tls.certificate is None) != (tls.private_key is None):
        missing, given = (
            ("private_key", "certificate")
            if tls.private_key is None
            else ("certificate", "private_key")
        )
        problems.append(
            f"{origin('tls', given)}: tls.{missing}: required when tls.{given} is set"
            " (set both, or neither for a self-signed certificate)"
        )
    for key, file in (
        ("tls.certificate", tls.certificate),
        ("tls.private_key", tls.private_key),
        ("demo.audio", config.demo.audio),
    ):
        if file is not None and not file.is_file():
            section, name = key.split(".")
            problems.append(f"{origin(section, name)}: {key}: file not found: {str(file)!r}")
    if problems:
        raise ConfigError(problems)


# -- paths ----------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def resolve_paths(config: Config) -> Config:
    """The same configuration with every path absolute (relative to the current directory)
    and the state_dir-relative defaults filled in (``admin.socket``)."""
    state_dir = _absolute(config.server.state_dir)
    socket = _absolute(config.admin.socket) if config.admin.socket else state_dir / "admin.sock"
    if config.admin.enabled and len(os.fsencode(socket)) > _UNIX_SOCKET_PATH_MAX:
        label = str(config.source) if config.source else "configuration"
        raise ConfigError(
            f"{label}: admin.socket: path too long for a Unix socket "
            f"({len(os.fsencode(socket))} bytes, at most {_UNIX_SOCKET_PATH_MAX}): {str(socket)!r}"
        )

    def optional(path: Path | None) -> Path | None:
        return _absolute(path) if path is not None else None

    return replace(
        config,
        server=replace(config.server, state_dir=state_dir),
        tls=replace(
            config.tls,
            certificate=optional(config.tls.certificate),
            private_key=optional(config.tls.private_key),
        ),
        admin=replace(config.admin, socket=socket),
        demo=replace(config.demo, audio=optional(config.demo.audio)),
    )

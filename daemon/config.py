"""salond configuration: typed, frozen, validated, with embedded defaults.

``load_config(None)`` gives the defaults, so salond runs with no file at all. A file only needs
the keys it changes; ``conf/salond.toml`` lists every key with its default and an explanation.
Command-line overrides are dotted keys (``{"server.port": 4460}``) applied on top of the file.

Each ``[section]`` is a frozen msgspec Struct: a key is one annotated field with its default and
a docstring, and its constraints (``Meta(ge=…)``, ``Literal[…]``) are both what msgspec checks
and what the error says was expected. To add a key: one field in its section's Struct and one
commented line in ``conf/salond.toml`` (tests/test_config.py holds the two to each other).

Every problem is a :class:`ConfigError` whose lines read ``<file>: <dotted.key>: <what is
wrong>``, so an operator can fix the file without reading this module. Paths are kept as
written (relative ones are relative to the current directory); :func:`resolve_paths` makes them
absolute and fills in the defaults that live under ``server.state_dir``.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

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
    "HttpConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "PluginsConfig",
    "Section",
    "ServerConfig",
    "StoreConfig",
    "StreamConfig",
    "TlsConfig",
    "Tokens",
    "convert_table",
    "load_config",
    "resolve_paths",
    "show_value",
    "unknown_key",
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


# -- value types ----------------------------------------------------------------------------
#
# A key's type says what it accepts; the error text is derived from the same type (see
# _expected), so a new key needs no message of its own. Values from TOML files are never
# coerced ("4460" is not a port); values typed on a command line are (see _from_text).
#
# A rule msgspec cannot express goes in the Meta's ``extra``: ``check`` (the raw value ->
# the value to convert, or ValueError), ``expected`` (the words for the error), ``note``
# (appended to them), ``from_text`` (how a command-line string is read).

_FINITE = sys.float_info.max  # an upper bound that refuses inf (and nan fails every bound)


def _host_name(value: Any) -> Any:
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        labels = value.split(".")
        if len(value) <= 253 and all(_HOST_LABEL.match(label) for label in labels):
            return value
    raise ValueError


def _distinct(value: Any) -> Any:
    if isinstance(value, list) and len(set(map(repr, value))) != len(value):
        raise ValueError
    return value


def _names_from_text(text: str) -> Any:
    # "--set plugins.enabled=a,b" as well as a TOML array literal.
    if text.strip().startswith("["):
        return _toml_value(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def _database_url(value: Any) -> Any:
    # The value may carry a password: an error shows it redacted, never as written.
    if isinstance(value, str) and (value == "" or value.startswith(_DATABASE_SCHEMES)):
        return value
    from salon.daemon.store.postgres import redact_url

    shown = show_value(redact_url(value) if isinstance(value, str) else value)
    raise ValueError(f"expected {_DATABASE_URL_EXPECTED}, got {shown}")


_DATABASE_SCHEMES = ("postgresql://", "postgres://")
_DATABASE_URL_EXPECTED = "a postgresql:// URL or an empty string"

Port = Annotated[int, Meta(ge=0, le=65535, extra={"note": " (0 picks any free port)"})]
PositiveInt = Annotated[int, Meta(ge=1)]
PositiveNumber = Annotated[float, Meta(gt=0, le=_FINITE)]
"""Seconds, events per second, ...: finite and above zero."""
NonNegativeNumber = Annotated[float, Meta(ge=0, le=_FINITE)]
Text = Annotated[str, Meta(pattern=r"\S", extra={"expected": "a non-empty string"})]
HostName = Annotated[
    str, Meta(extra={"check": _host_name, "expected": "a DNS name or an IP address"})
]
DatabaseUrl = Annotated[
    str, Meta(extra={"check": _database_url, "expected": _DATABASE_URL_EXPECTED})
]
NameList = Annotated[
    tuple[Annotated[str, Meta(min_length=1)], ...],
    Meta(
        extra={
            "check": _distinct,
            "expected": "a list of distinct non-empty strings",
            "from_text": _names_from_text,
        }
    ),
]


class Tokens(Mapping[str, str]):
    """``[auth.tokens]``: static token -> user id, read-only. The tokens are secrets and
    configurations end up in logs, so the repr shows only how many there are."""

    def __init__(self, entries: Mapping[str, str] | None = None) -> None:
        self._entries = MappingProxyType(dict(entries or {}))

    def __getitem__(self, token: str) -> str:
        return self._entries[token]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Tokens(<{len(self)} hidden>)"


MAX_TOKEN_USER_BYTES = 128
"""Longest user id a token may name: the bound the daemon holds every identity to
(``salon.daemon.core.identity.MAX_USER_ID_BYTES``, PROTOCOL.md 12)."""


def _tokens(value: Any) -> Tokens:
    if not isinstance(value, Mapping):
        raise ValueError
    for token, user in value.items():
        # The token is a secret: name it by a short prefix only.
        shown = repr(token[:4] + "...") if len(token) > 4 else repr(token)
        if not token.strip():
            raise ValueError(f"expected non-empty tokens, got {show_value(token)}")
        if not isinstance(user, str) or not user.strip():
            raise ValueError(
                f"expected a non-empty user id for token {shown}, got {show_value(user)}"
            )
        if len(user.encode()) > MAX_TOKEN_USER_BYTES:
            raise ValueError(
                f"expected a user id of at most {MAX_TOKEN_USER_BYTES} bytes for token {shown},"
                f" got {show_value(user)}"
            )
        if user.startswith(GUEST_PREFIX):
            raise ValueError(
                f"expected a user id for token {shown} not starting with {GUEST_PREFIX!r}"
                f" (reserved for guests), got {show_value(user)}"
            )
    return Tokens(value)


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError
    return Path(value).expanduser()


@dataclass(frozen=True)
class _Custom:
    """A value type msgspec does not know, read by ``decode`` (through msgspec's dec_hook)."""

    expected: str
    decode: Callable[[Any], Any]
    when_optional: str = ""
    """The expectation when ``""`` is also accepted, meaning "not set"."""


_CUSTOM: dict[type, _Custom] = {
    Path: _Custom("a non-empty path", _path, when_optional="a path or an empty string"),
    Tokens: _Custom("a table of token = user id strings", _tokens),
}
"""``decode`` and ``check`` raise ValueError: without a message for "not this kind of value"
(the error then says what the type expects), or with a whole ``expected ..., got ...``."""


def _decode(kind: type, value: Any) -> Any:
    custom = _CUSTOM.get(kind)
    if custom is None:
        raise NotImplementedError(f"no decoder for {kind.__name__}")
    return custom.decode(value)


def show_value(value: Any) -> str:
    """A TOML value as an error message shows it after "got"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


def _toml_value(text: str) -> Any:
    """A command-line value read as a TOML literal when it is one, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _plain(info: mi.Type) -> tuple[mi.Type, dict[str, Any]]:
    """The type without its Annotated wrapper, and the wrapper's ``extra``."""
    if isinstance(info, mi.Metadata):
        return info.type, dict(info.extra or {})
    return info, {}


def _expected(info: mi.Type) -> str:
    """What a key of this type accepts, in the words of an error message."""
    info, extra = _plain(info)
    if "expected" in extra:
        return str(extra["expected"])
    if isinstance(info, mi.IntType):
        low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
        high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
        if low is not None and high is not None:
            text = f"an integer in {low}..{high}"
        elif low == 1:
            text = "a positive integer"
        else:
            text = "an integer" if low is None else f"an integer >= {low}"
    elif isinstance(info, mi.FloatType):
        if info.gt is not None:
            text = "a positive number" if info.gt == 0 else f"a number > {info.gt:g}"
        elif info.ge is not None:
            text = "a non-negative number" if info.ge == 0 else f"a number >= {info.ge:g}"
        else:
            text = "a number"
    elif isinstance(info, mi.BoolType):
        text = "true or false"
    elif isinstance(info, mi.StrType):
        if info.pattern:
            text = f"a string matching {info.pattern!r}"
        elif info.min_length:
            text = "a non-empty string" if info.min_length == 1 else "a longer string"
        else:
            text = "a string"
    elif isinstance(info, mi.LiteralType):
        text = "one of " + ", ".join(str(v) for v in info.values)
    elif isinstance(info, mi.CustomType) and info.cls in _CUSTOM:
        text = _CUSTOM[info.cls].expected
    elif isinstance(info, mi.UnionType):
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        first, _ = _plain(others[0])
        if len(others) == 1 and isinstance(first, mi.CustomType) and first.cls in _CUSTOM:
            text = _CUSTOM[first.cls].when_optional or _CUSTOM[first.cls].expected
        else:
            text = " or ".join(_expected(t) for t in others)
            if len(others) < len(info.types):
                text += " or an empty string"
    elif isinstance(info, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        text = "a list"
    elif isinstance(info, (mi.DictType, mi.StructType)):
        text = "a table"
    else:
        text = "a valid value"
    return text + str(extra.get("note", ""))


def _prepared(value: Any, info: mi.Type) -> Any:
    """The value msgspec is given: after the key's own ``check`` (ValueError if refused), and
    the reading rules msgspec has no switch for: choices are case-insensitive, and an empty
    string means "not set" for a key that may be unset."""
    info, extra = _plain(info)
    if "check" in extra:
        value = extra["check"](value)
    if isinstance(info, mi.LiteralType) and isinstance(value, str):
        lowered = value.lower()
        return lowered if lowered in info.values else value
    optional = isinstance(info, mi.UnionType) and mi.NoneType() in info.types
    if optional and value == "":
        return None
    return value


def _from_text(info: mi.Type, text: str) -> Any:
    """A command-line string as the raw value the key's type expects (``"4460"`` -> 4460)."""
    info, extra = _plain(info)
    if "from_text" in extra:
        return extra["from_text"](text)
    if isinstance(info, mi.UnionType):
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return _from_text(others[0], text) if len(others) == 1 else text
    if isinstance(info, (mi.IntType, mi.FloatType)):
        try:
            return (int if isinstance(info, mi.IntType) else float)(text.strip())
        except ValueError:
            return text
    if isinstance(info, mi.BoolType):
        return _BOOLEAN_TEXT.get(text.strip().lower(), text)
    return text


_BOOLEAN_TEXT = {"true": True, "yes": True, "on": True, "1": True}
_BOOLEAN_TEXT.update({"false": False, "no": False, "off": False, "0": False})


# -- turning a table into a Struct ----------------------------------------------------------

S = TypeVar("S", bound=msgspec.Struct)

# msgspec's ValidationError reads "<what> - at `$.key[0]...`" ("- at" absent at the top).
_ERROR = re.compile(r"(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")
_MISSING = re.compile(r"Object missing required field `(?P<key>[^`]*)`")
_TOP_KEY = re.compile(r"\.([^.\[]+)")


@functools.cache
def _fields(cls: type) -> dict[str, mi.Type]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    types = {f.name: f.type for f in info.fields}
    for f in msgspec.structs.fields(cls):
        if get_origin(f.type) is Literal:  # msgspec sorts the choices; keep them as written
            types[f.name] = mi.LiteralType(values=get_args(f.type))
    return types


def convert_table(
    table: Mapping[str, Any],
    cls: type[S],
    where: Callable[[str], str],
    *,
    known: Iterable[str] | None = None,
    hint: str = "",
) -> S:
    """``table`` (from TOML) as a ``cls`` Struct, or a :class:`ConfigError` naming every bad key.

    ``where(key)`` is how a line starts (``"conf/salond.toml: server.port"``). msgspec stops
    at the first problem, so each bad key is noted, set aside and the rest converted again:
    the operator sees every mistake in one run. ``known`` (default: the Struct's fields) is
    what an unknown key is compared with for "did you mean"; ``hint`` is added to that line.
    """
    types = _fields(cls)
    order = {key: index for index, key in enumerate(table)}
    problems: dict[str, str] = {}  # key -> what is wrong, reported in the table's order
    prepared: dict[str, Any] = {}
    for key, value in table.items():
        try:
            prepared[key] = _prepared(value, types[key]) if key in types else value
        except ValueError as exc:
            problems[key] = _refusal(str(exc), types[key], value)
    while True:
        try:
            result = msgspec.convert(prepared, cls, dec_hook=_decode)
        except msgspec.ValidationError as exc:
            key, text = _explain(str(exc), table, types, known, hint)
            problems[key] = text
            if key in prepared:
                del prepared[key]
                continue
        if problems:
            # No key to name (a check of the whole table): the line names the table.
            lines = sorted(problems.items(), key=lambda item: order.get(item[0], len(order)))
            raise ConfigError([f"{where(key).rstrip('.')}: {text}" for key, text in lines])
        return result


def _refusal(message: str, info: mi.Type, value: Any) -> str:
    if message.startswith("expected "):
        return message  # a check's own sentence
    return f"expected {_expected(info)}, got {show_value(value)}"


def _explain(
    message: str,
    table: Mapping[str, Any],
    types: Mapping[str, mi.Type],
    known: Iterable[str] | None,
    hint: str,
) -> tuple[str, str]:
    """(key, what is wrong) for one msgspec ValidationError message."""
    match = _ERROR.fullmatch(message)
    assert match is not None  # the pattern matches any text
    text, path = match["text"], match["path"] or ""
    unknown, missing = _UNKNOWN.fullmatch(text), _MISSING.fullmatch(text)
    if unknown and not path:
        key = unknown["key"]
        return key, unknown_key(key, types if known is None else known) + hint
    if missing and not path:
        return missing["key"], f"missing, expected {_expected(types[missing['key']])}"
    top = _TOP_KEY.match(path)
    if top is None or top[1] not in types:
        return "", text  # nothing to point at; not expected from a table of keys
    key = top[1]
    # Deeper inside the value (a list item, a nested table): unless the key's expectation
    # says it all, say where, in msgspec's words.
    deeper = path != f".{key}" and "expected" not in _plain(types[key])[1]
    inside = f" ({text} at {key}{path[len(key) + 1 :]})" if deeper else ""
    return key, _refusal(text, types[key], table.get(key)) + inside


def unknown_key(name: str, known: Iterable[str]) -> str:
    """``unknown key (known: a, b); did you mean 'a'?`` for a key that is none of ``known``."""
    return f"unknown key{_known(name, known)}"


def _known(name: str, known: Iterable[str]) -> str:
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known: {', '.join(names)}){suggestion}"


# -- the configuration ----------------------------------------------------------------------


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``[section]`` of the file: each field is a key, with its default and a docstring.

    A subclass repeats ``frozen=True`` (msgspec inherits it; mypy wants to see it)."""


class ServerConfig(Section, frozen=True):
    """``[server]``: where salond listens and how its QUIC connections behave."""

    host: Text = "127.0.0.1"
    """Address to bind the UDP socket to (``0.0.0.0`` / ``::`` for every interface)."""
    port: Port = 4460
    """UDP port; 0 lets the system pick a free one (tests)."""
    state_dir: Path = Path("state")
    """Directory for the database, generated TLS material and the admin socket."""
    idle_timeout: PositiveNumber = 30.0
    """Seconds without any packet after which a QUIC connection is dropped."""
    max_datagram_size: Annotated[int, Meta(ge=200, le=1180)] = 1100
    """Largest QUIC DATAGRAM payload salond sends or accepts, in bytes."""
    drain_timeout: NonNegativeNumber = 5.0
    """On SIGTERM: seconds to tell clients the server is going away before closing."""
    public_name: HostName = "localhost"
    """Name clients use to reach the server: in the self-signed certificate and join lines."""


class TlsConfig(Section, frozen=True):
    """``[tls]``: certificate and key files; both unset means a generated self-signed pair."""

    certificate: Path | None = None
    """PEM certificate (chain, leaf first); None: self-signed in ``state_dir/tls``."""
    private_key: Path | None = None
    """PEM private key matching ``certificate``, unencrypted."""


class AuthConfig(Section, frozen=True):
    """``[auth]``: who may connect."""

    allow_guests: bool = True
    """Admit clients without credentials under a stable identity derived from their key."""
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    """``[auth.tokens]``: static token -> user id."""


class LimitsConfig(Section, frozen=True):
    """``[limits]``: timeouts, queue bounds, quotas and rate limits."""

    knock_ttl: PositiveNumber = 120.0
    """Seconds a knock (request to join an approval room) waits before it expires."""
    owner_grace: NonNegativeNumber = 60.0
    """Seconds a disconnected owner keeps the room before ownership passes on."""
    outlet_queue: Annotated[int, Meta(ge=2, le=1024)] = 16
    """Datagrams queued per listener before the oldest audio is dropped."""
    max_rooms_per_user: PositiveInt = 5
    """Open rooms one user may own at a time."""
    max_sessions: PositiveInt = 10000
    """Concurrent client connections; further handshakes are refused."""
    hello_timeout: PositiveNumber = 10.0
    """Seconds after the handshake within which a connection must complete ``hello``."""
    message_rate: PositiveNumber = 50.0
    """Control messages per second one session may send on average."""
    message_burst: PositiveInt = 100
    """Control messages one session may send at once above the average rate."""
    knock_rate: PositiveNumber = 10.0
    """Knocks per second accepted from one client address."""
    max_speakers_cap: PositiveInt = 100
    """Upper bound for any room's speaker limit."""
    guest_connections_per_address: PositiveInt = 20
    """Guest connections open at once from one source (IPv4 address or IPv6 prefix)."""
    guest_connect_rate: NonNegativeNumber = 2.0
    """Guest connections per second from one source on average; 0: unlimited."""
    guest_connect_burst: PositiveInt = 20
    """Guest connections from one source at once above ``guest_connect_rate``."""
    guest_rooms_per_address: PositiveInt = 5
    """Open rooms guests from one source may own together, whatever keys they use."""
    guest_create_rate: NonNegativeNumber = 0.1
    """Rooms per second guests from one source may create on average; 0: unlimited."""
    guest_create_burst: PositiveInt = 5
    """Rooms guests from one source may create at once above ``guest_create_rate``."""
    ipv6_prefix: Annotated[int, Meta(ge=16, le=128)] = 64
    """IPv6 addresses count per network of this prefix length (one customer's /64)."""
    guest_limits_for_users: bool = False
    """Hold authenticated (token) users to the guest limits too; operators never are."""
    ban_address_memory: NonNegativeNumber = 86400.0
    """Seconds a ban remembers the banned user's address, flagged on knocks; 0: off."""
    recording_max_duration: NonNegativeNumber = 14400.0
    """Seconds one recording may last before salond stops it; 0: no bound."""
    recording_disk_mib: NonNegativeNumber = 10240.0
    """MiB all recording files may take together; reaching it stops recordings; 0: no bound."""
    min_bitrate: Annotated[int, Meta(ge=6000, le=510000)] = 16000
    """Lowest Opus bitrate (bit/s) a speaker's loss adaptation may go down to (sent in hello)."""
    max_bitrate: Annotated[int, Meta(ge=6000, le=510000)] = 40000
    """Highest Opus bitrate (bit/s) a speaker may send, redundancy not counted (sent in hello)."""
    snapshot_listeners: Annotated[int, Meta(ge=0, le=1000)] = 100
    """Listeners a ``room_state`` lists at most; clients page the rest (``list_participants``)."""
    audience_events_above: Annotated[int, Meta(ge=0)] = 100
    """Above this many listeners, listeners' comings and goings reach members as counts only."""
    counts_interval: PositiveNumber = 1.0
    """Seconds between two ``room_updated`` count updates of a room with a big audience."""


class AdminConfig(Section, frozen=True):
    """``[admin]``: the local admin API used by salon-admin and salonctl."""

    enabled: bool = True
    """Serve the admin API."""
    socket: Path | None = None
    """Unix socket path; None: ``state_dir/admin.sock``."""


class MetricsConfig(Section, frozen=True):
    """``[metrics]``: Prometheus-style metrics over HTTP."""

    enabled: bool = False
    """Serve metrics."""
    host: Text = "127.0.0.1"
    """TCP address of the metrics endpoint."""
    port: Port = 9464
    """TCP port of the metrics endpoint."""


class StoreConfig(Section, frozen=True):
    """``[store]``: where salond keeps what survives a restart (docs/postgresql.md)."""

    url: DatabaseUrl = ""
    """PostgreSQL connection URL; empty: the SQLite file ``state_dir/salon.db``."""


class HttpConfig(Section, frozen=True):
    """``[http]``: the HTTP endpoint serving the web client (docs/web_client.md)."""

    enabled: bool = False
    """Serve the web client over HTTP (``salond --demo`` turns it on)."""
    host: Text = "127.0.0.1"
    """TCP address of the HTTP endpoint."""
    port: Port = 8460
    """TCP port of the HTTP endpoint."""


ListenerCount = Annotated[int, Meta(ge=0, extra={"note": " (0: every listener streams)"})]
BaseUrl = Annotated[
    str, Meta(pattern=r"^(https?://\S+)?$", extra={"expected": "empty or an http(s):// URL"})
]


class StreamConfig(Section, frozen=True):
    """``[stream]``: stream mode, each room's mix as HLS for an audience past real time
    (docs/stream_mode.md); served on the ``[http]`` endpoint."""

    enabled: bool = False
    """Offer stream mode (needs ``[http] enabled``)."""
    realtime_listeners: ListenerCount = 100
    """Real-time listeners a room carries; listeners who join past it get the stream."""
    segment_seconds: Annotated[float, Meta(ge=0.5, le=10)] = 1.0
    """Target duration of one HLS segment, in seconds."""
    window: Annotated[int, Meta(ge=3, le=60)] = 6
    """Segments the playlist lists and salond keeps; older ones are deleted."""
    bitrate: Annotated[int, Meta(ge=16000, le=320000)] = 64000
    """AAC bit rate of the stream, bits per second."""
    public_url: BaseUrl = ""
    """Base URL clients fetch the stream from (a caching front such as nginx or a CDN);
    empty: the ``[http]`` endpoint's own address."""


RedisUrl = Annotated[
    str,
    Meta(
        pattern=r"^((redis|rediss|unix)://\S+)?$",
        extra={"expected": "empty or a redis://, rediss:// or unix:// URL"},
    ),
]
Milliseconds = Annotated[int, Meta(ge=100, le=600_000)]
NodeId = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        extra={"expected": "at most 64 letters, digits, '.', '_' or '-'"},
    ),
]


class ClusterConfig(Section, frozen=True):
    """``[cluster]``: one room across several salond nodes, Redis as the control plane
    (docs/cluster.md). Off by default: an empty ``redis_url`` is a single process."""

    redis_url: RedisUrl = ""
    """Redis the nodes share; empty: no cluster (the default)."""
    node_id: NodeId = ""
    """This node's name in the cluster; empty: the host name and QUIC port."""
    secret_file: Path | None = None
    """File holding the cluster secret (at least 32 bytes) that authenticates bus messages."""
    heartbeat_ms: Milliseconds = 1000
    """How often a node refreshes its registry entry; the entry expires after three."""
    lease_ms: Milliseconds = 3000
    """How long a room's home lease lasts without renewal before another node takes over."""
    replay_window_ms: Milliseconds = 5000
    """Bus messages older or newer than this (by their timestamp) are refused as replays."""
    relay_queue: Annotated[int, Meta(ge=16, le=1_000_000)] = 4096
    """Bus messages queued per direction at most; past it the oldest are dropped, counted."""
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    """salond processes on this machine sharing the UDP port (SO_REUSEPORT), each its own
    node; 1: one process, as without a cluster. More than 1 needs ``redis_url``."""
    redirect_margin: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    """Redirect a client's first join to a live node with at least this many fewer sessions
    (PROTOCOL.md section 17); 0: never redirect."""
    relay_transport: Literal["udp", "redis"] = "udp"
    """How media travels between nodes: "udp" straight to each interested node (Redis only
    for interest and addresses) or "redis" pub/sub; udp costs less CPU per relayed packet and
    adds less latency (BENCHMARKS.md, "Media relay between nodes")."""
    relay_port: Port = 0
    """UDP port the udp relay listens on (0: a free one; keep 0 with ``workers`` > 1); its
    address is advertised through Redis."""
    relay_tick_ms: Annotated[int, Meta(ge=0, le=100)] = 0
    """How long relayed media waits to be batched; 0: sent on the next turn of the event loop
    (least latency), more: fewer, larger messages (less CPU per packet, more latency)."""


class DemoConfig(Section, frozen=True):
    """``[demo]``: an always-open room where a bot speaks, to try a client right away."""

    enabled: bool = False
    """Create the demo room and start its bot."""
    room: Text = "lobby"
    """Id of the demo room."""
    title: Text = "Salon demo lobby"
    """Title of the demo room."""
    audio: Path | None = None
    """Sound file the bot plays in a loop; None: generated speech or tones."""
    bot_name: Text = "Demo bot"
    """Display name of the bot."""


def _no_plugin_tables() -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({})


class PluginsConfig(Section, frozen=True):
    """``[plugins]``: which plugins run, and their own ``[plugins.<name>]`` tables."""

    enabled: NameList = ()
    """Names of the installed plugins to load (entry points group ``salon.plugins``)."""
    plugin_timeout: PositiveNumber = 2.0
    """Seconds an asynchronous hook may take before salond gives up on it."""
    settings: Mapping[str, Mapping[str, Any]] = msgspec.field(default_factory=_no_plugin_tables)
    """``[plugins.<name>]`` tables by plugin name, as written (each plugin validates its own);
    not a key of its own: every table under ``[plugins]`` lands here."""


class LoggingConfig(Section, frozen=True):
    """``[logging]``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level logged."""
    json: bool = False
    """One JSON object per line instead of human-readable lines."""


class TuningConfig(Section, frozen=True):
    """``[tuning]``: how the salond process runs its event loop, garbage collector and socket.

    The defaults are what BENCHMARKS.md measured best; each key turns one measure off to
    compare (``bench/run_all.py --servers``) or to rule it out when chasing a problem.
    """

    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """``auto``: uvloop when it is installed, else asyncio's; ``uvloop`` requires it."""
    gc_freeze: bool = True
    """Once started, move everything alive out of the cyclic collector's reach (``gc.freeze``)."""
    gc_threshold: Annotated[int, Meta(ge=0, extra={"note": " (0: Python's)"})] = 10000
    """Allocations between two young-generation collections (older ones at 20); 0 keeps
    Python's own thresholds (700, 10, 10)."""
    read_batch: Annotated[int, Meta(ge=1, le=1024)] = 64
    """Datagrams read from the QUIC socket per loop iteration at most; 1 keeps asyncio's
    one-per-iteration reader (uvloop batches on its own)."""
    read_interval: Annotated[float, Meta(ge=0.0, le=0.02)] = 0.0
    """Seconds between two reads of the QUIC socket while datagrams keep coming (one loop
    wake-up reads all the listeners' ACKs of the interval; a speaker's packet waits up to
    this long); 0: read at each readiness event (the default: 2 ms measured no gain on a busy
    machine, see BENCHMARKS.md). Needs ``read_batch`` above 1."""
    fast_path: bool = True
    """Send media in packets built beside aioquic's writer when nothing else is pending
    (switches itself off on an aioquic release it was not written for)."""
    ack_fast_path: bool = True
    """Apply listeners' ACK-only packets without aioquic's general receive path (same
    effect; switches itself off with ``fast_path`` on an aioquic release it was not written
    for)."""
    media_link: bool = True
    """While a listener's connection carries nothing but audio, its sends and the ACKs it
    returns run in C on one compact copy of the connection's state (needs the C extension,
    ``fast_path`` and ``ack_fast_path``; the same effect as without)."""
    send_batch: Literal["sendmmsg", "sendto"] = "sendmmsg"
    """``sendmmsg``: the packets of one loop tick leave in one system call (Linux; falls back
    to ``sendto`` elsewhere); ``sendto``: one system call per packet."""
    media_flush_interval: Annotated[float, Meta(ge=0, le=0.02)] = 0.010
    """Seconds between two flushes of forwarded media at least: media arriving sooner waits
    for the interval's end, and what several speakers sent meanwhile shares each listener's
    QUIC packet (a speaker alone, every 20 ms, never waits). 0: every datagram at once."""
    shared_timers: bool = True
    """Every connection's QUIC timer (loss detection, ACK delay, idle time-out) in one heap
    behind one event-loop timer; false: one loop timer per connection, as aioquic does."""


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole salond configuration. ``Config()`` is the embedded defaults."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    stream: StreamConfig = msgspec.field(default_factory=StreamConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    demo: DemoConfig = msgspec.field(default_factory=DemoConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    tuning: TuningConfig = msgspec.field(default_factory=TuningConfig)
    source: Path | None = None
    """The file this was loaded from; None for defaults and overrides only. Not compared."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _sections())

    __hash__ = None  # type: ignore[assignment]  # sections hold mappings

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


@functools.cache
def _sections() -> dict[str, type[Section]]:
    """Section name -> section Struct, in file order."""
    return {f.name: f.default_factory for f in msgspec.structs.fields(Config) if f.name != "source"}


_PLUGIN_TABLES = "settings"
"""The PluginsConfig field that gathers the ``[plugins.<name>]`` tables (not a key itself)."""


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
            problems.append(
                f"{origin(name, '')}: {name}: expected a table, got {show_value(table)}"
            )
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
    info = _fields(cls).get(name) if cls is not None else None
    if isinstance(value, str):
        if info is not None and len(parts) == 2:
            value = _from_text(info, value)
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


def _build_section(
    name: str, cls: type[Section], table: Mapping[str, Any], origin: _Origin
) -> Section:
    def where(key: str) -> str:
        return f"{origin(name, key)}: {name}.{key}"

    if cls is not PluginsConfig:
        return convert_table(table, cls, where)
    # [plugins.<name>] tables are the plugins' own (each validates its table when loaded);
    # everything else under [plugins] is a key of PluginsConfig.
    tables = {key: value for key, value in table.items() if isinstance(value, Mapping)}
    keys = {key: value for key, value in table.items() if key not in tables}
    known = [key for key in _fields(PluginsConfig) if key != _PLUGIN_TABLES]
    hint = "; per-plugin settings go in [plugins.<name>] tables"
    problems: list[str] = []
    if _PLUGIN_TABLES in keys:
        del keys[_PLUGIN_TABLES]
        problems.append(f"{where(_PLUGIN_TABLES)}: {unknown_key(_PLUGIN_TABLES, known)}{hint}")
    try:
        plugins = convert_table(keys, PluginsConfig, where, known=known, hint=hint)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    settings = MappingProxyType({key: MappingProxyType(dict(t)) for key, t in tables.items()})
    return msgspec.structs.replace(plugins, settings=settings)


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
    if config.cluster.workers > 1 and not config.cluster.redis_url:
        problems.append(
            f"{origin('cluster', 'workers')}: cluster.workers: {config.cluster.workers} worker"
            " processes need cluster.redis_url (each worker is a cluster node)"
        )
    limits = config.limits
    if limits.min_bitrate > limits.max_bitrate:
        problems.append(
            f"{origin('limits', 'min_bitrate')}: limits.min_bitrate: {limits.min_bitrate} is above"
            f" limits.max_bitrate ({limits.max_bitrate})"
        )
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

    replace = msgspec.structs.replace
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
        cluster=replace(config.cluster, secret_file=optional(config.cluster.secret_file)),
    )

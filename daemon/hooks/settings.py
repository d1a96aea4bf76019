"""A plugin's own ``[plugins.<name>]`` table: a whole msgspec Struct, or typed getters.

Errors read like salond's own configuration errors (``<file>: plugins.<name>.<key>: ...``),
because both are produced by :func:`salon.daemon.config.convert_table`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from salon.daemon.config import ConfigError, convert_table, show_value, unknown_key

S = TypeVar("S", bound=msgspec.Struct)

_NON_EMPTY = Annotated[str, Meta(min_length=1)]


class PluginSettings(Mapping[str, Any]):
    """Read-only view of ``[plugins.<name>]``; the getters check types and name the key.

    Every getter raises :class:`~salon.daemon.config.ConfigError` with a line such as
    ``conf/salond.toml: plugins.webhooks.retries: expected an integer >= 0, got -1``, so a
    plugin that validates its settings in its constructor stops salond at start-up with a
    message the operator can act on. :meth:`load` reads the whole table into the plugin's own
    msgspec Struct instead, with the same kind of messages.
    """

    def __init__(self, name: str, table: Mapping[str, Any], source: str = "configuration"):
        self.name = name
        self._table = dict(table)
        self._source = source

    def __getitem__(self, key: str) -> Any:
        return self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def problem(self, key: str, text: str) -> ConfigError:
        """The error to raise for ``key``; use it for checks the getters do not cover."""
        return ConfigError(f"{self._source}: plugins.{self.name}.{key}: {text}")

    def _invalid(self, key: str, expected: str, value: Any) -> ConfigError:
        return self.problem(key, f"expected {expected}, got {show_value(value)}")

    def check_known(self, keys: Iterable[str]) -> None:
        """Refuse keys the plugin does not know (a typo would otherwise be silently ignored)."""
        known = list(keys)
        unknown = [key for key in self._table if key not in known]
        if unknown:
            raise ConfigError(
                [self.problem(key, unknown_key(key, known)).problems[0] for key in unknown]
            )

    def load(self, cls: type[S]) -> S:
        """The whole table as ``cls``, a msgspec Struct whose fields are the plugin's keys.

        Declare constraints on the fields (``Annotated[int, Meta(ge=1)]``, ``Literal[...]``)
        and defaults for optional keys; unknown keys, wrong types and values out of range
        raise one :class:`ConfigError` naming each key and what it expects.
        """
        self.check_known(field.name for field in msgspec.structs.fields(cls))
        return convert_table(
            self._table, cls, lambda key: f"{self._source}: plugins.{self.name}.{key}"
        )

    def _get(self, key: str, default: Any, kind: Any, expected: str) -> Any:
        value = self._table.get(key, default)
        try:
            return msgspec.convert(value, kind)
        except msgspec.ValidationError:
            raise self._invalid(key, expected, value) from None

    def text(self, key: str, default: str | None = None) -> str | None:
        text: str | None = self._get(key, default, _NON_EMPTY | None, "a non-empty string")
        return text

    def flag(self, key: str, default: bool) -> bool:
        flag: bool = self._get(key, default, bool, "true or false")
        return flag

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, allow_minimum: bool = True
    ) -> float:
        bound = Meta(ge=minimum) if allow_minimum else Meta(gt=minimum)
        finite = Meta(le=sys.float_info.max)
        expected = f"a number {'>=' if allow_minimum else '>'} {minimum:g}"
        number: float = self._get(key, default, Annotated[float, bound, finite], expected)
        return number

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        kind = Annotated[int, Meta(ge=minimum)]
        integer: int = self._get(key, default, kind, f"an integer >= {minimum}")
        return integer

    def strings(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        if self._table.get(key) is None:
            return tuple(default)
        strings: tuple[str, ...] = self._get(
            key, None, tuple[_NON_EMPTY, ...], "a list of non-empty strings"
        )
        return strings

    def table(self, key: str) -> dict[str, Any]:
        table: dict[str, Any] = self._get(key, {}, dict[str, Any], "a table")
        return table

    def string_table(self, key: str) -> dict[str, str]:
        table = self.table(key)
        for name, value in table.items():
            if not isinstance(value, str) or not value:
                raise self._invalid(f"{key}.{name}", "a non-empty string", value)
        return table

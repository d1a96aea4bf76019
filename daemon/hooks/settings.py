"""A plugin's own ``[plugins.<name>]`` table, with typed getters whose errors name the key."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from salon.daemon.config import ConfigError


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


class PluginSettings(Mapping[str, Any]):
    """Read-only view of ``[plugins.<name>]``; the getters check types and name the key.

    Every getter raises :class:`~salon.daemon.config.ConfigError` with a line such as
    ``conf/salond.toml: plugins.webhooks.retries: expected an integer >= 0, got -1``, so a
    plugin that validates its settings in its constructor stops salond at start-up with a
    message the operator can act on.
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
        return self.problem(key, f"expected {expected}, got {_show(value)}")

    def check_known(self, keys: Iterable[str]) -> None:
        """Refuse keys the plugin does not know (a typo would otherwise be silently ignored)."""
        known = list(keys)
        unknown = [key for key in self._table if key not in known]
        if unknown:
            raise ConfigError(
                [
                    f"{self._source}: plugins.{self.name}.{key}: unknown key"
                    f" (known: {', '.join(known)})"
                    for key in unknown
                ]
            )

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._table.get(key, default)
        if value is None or (isinstance(value, str) and value):
            return value
        raise self._invalid(key, "a non-empty string", value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._table.get(key, default)
        if isinstance(value, bool):
            return value
        raise self._invalid(key, "true or false", value)

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, allow_minimum: bool = True
    ) -> float:
        value = self._table.get(key, default)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > minimum or (allow_minimum and value == minimum))
        ):
            return float(value)
        relation = ">=" if allow_minimum else ">"
        raise self._invalid(key, f"a number {relation} {minimum:g}", value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._table.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        raise self._invalid(key, f"an integer >= {minimum}", value)

    def strings(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        value = self._table.get(key)
        if value is None:
            return tuple(default)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise self._invalid(key, "a list of non-empty strings", value)

    def table(self, key: str) -> dict[str, Any]:
        value = self._table.get(key, {})
        if isinstance(value, Mapping):
            return dict(value)
        raise self._invalid(key, "a table", value)

    def string_table(self, key: str) -> dict[str, str]:
        table = self.table(key)
        for name, value in table.items():
            if not isinstance(value, str) or not value:
                raise self._invalid(f"{key}.{name}", "a non-empty string", value)
        return table

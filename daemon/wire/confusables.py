# ruff: noqa: RUF001, RUF002, RUF003  (this module's table is made of lookalike letters)
"""Lookalike names: a small confusable skeleton after Unicode TR39, for the knock review.

A guest who names themselves "Grаce" with a Cyrillic "а" must not pass for "Grace" when a host
decides who to admit. :func:`skeleton` maps the common Cyrillic and Greek lookalikes of Latin
letters (and a few digits and symbols) to the Latin letter they imitate, after NFKD and
case folding, so two names that look alike have the same skeleton. :func:`scripts` names the
writing systems a name mixes. TR39's full table has thousands of entries; the letters below are
the ones that pass for Latin in the fonts terminals use, which is what an impostor needs.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Lower-case lookalikes (the text is case-folded first) -> the Latin they imitate.
_LOOKALIKES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "з": "3", "һ": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "л": "n", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y",
    "ӏ": "l", "ɡ": "g", "ո": "n", "ս": "u", "օ": "o",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j", "ѵ": "v", "μ": "u",
    # Latin and digits that read as other Latin letters
    "ı": "i", "ł": "l", "ø": "o", "0": "o", "1": "l", "|": "l", "5": "s", "ß": "ss",
    "ſ": "s", "ɑ": "a", "ɩ": "i", "ʟ": "l", "ꞵ": "b",
}  # fmt: skip
# Lookalike sequences (rn reads as m, vv as w) after single letters are mapped.
_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"))

_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "HEBREW", "ARABIC")


def skeleton(name: str) -> str:
    """What ``name`` looks like: equal skeletons mean the names can be taken for each other."""
    folded = unicodedata.normalize("NFKD", name).casefold()
    letters: list[str] = []
    for char in folded:
        if unicodedata.combining(char) or (char.isspace() and letters and letters[-1] == " "):
            continue
        letters.append(" " if char.isspace() else _LOOKALIKES.get(char, char))
    text = "".join(letters).strip()
    for sequence, replacement in _SEQUENCES:
        text = text.replace(sequence, replacement)
    return text


def latin_reading(name: str) -> str:
    """``name`` with each lookalike letter replaced by the Latin one it imitates, case kept."""
    out: list[str] = []
    for char in unicodedata.normalize("NFC", name):
        lower = char.lower()
        latin = _LOOKALIKES.get(lower) if not char.isascii() else None
        if latin is None:
            out.append(char)
        else:
            out.append(latin.upper() if char != lower else latin)
    return "".join(out)


def scripts(name: str) -> set[str]:
    """The writing systems of the letters of ``name`` (LATIN, CYRILLIC, GREEK, ... or OTHER)."""
    found: set[str] = set()
    for char in name:
        if not char.isalpha():
            continue
        words = unicodedata.name(char, "").split()
        found.add(next((w for w in words if w in _SCRIPTS), "OTHER"))
    return found


@dataclass(frozen=True)
class NameWarning:
    """What a host should know about a name before trusting it."""

    mixed_scripts: bool
    """Letters from more than one writing system (``Grаce`` with a Cyrillic ``а``)."""
    looks_like: str
    """The Latin reading of a name holding lookalike letters, else ``""``."""

    def __bool__(self) -> bool:
        return self.mixed_scripts or bool(self.looks_like)

    def describe(self) -> str:
        """``⚠ mixed scripts · looks like: grace`` (empty when there is nothing to say)."""
        parts = []
        if self.mixed_scripts:
            parts.append("⚠ mixed scripts")
        if self.looks_like:
            parts.append(f"{'' if parts else '⚠ '}looks like: {self.looks_like}")
        return " · ".join(parts)


def name_warning(name: str) -> NameWarning:
    """Whether ``name`` mixes scripts or holds letters that imitate Latin ones."""
    mixed = len(scripts(name) - {"OTHER"}) > 1
    plain = unicodedata.normalize("NFKD", name).casefold()
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    imitating = any(c in _LOOKALIKES and not c.isascii() for c in plain)
    reading = skeleton(name)
    # TR39's whole-script test: a name entirely in Greek or Cyrillic is only suspect when all of
    # it reads as Latin ("Сосо"); a Greek name with Greek-only letters is just Greek.
    looks_like = latin_reading(name) if imitating and (mixed or reading.isascii()) else ""
    return NameWarning(mixed_scripts=mixed, looks_like=looks_like)


def confusable(first: str, second: str) -> bool:
    """Two names a reader could take for each other."""
    return skeleton(first) == skeleton(second)

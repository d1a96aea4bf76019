"""The one rule for untrusted text: names, titles, topics, descriptions, reasons, plugin strings.

Every byte a client or a plugin sends is hostile. Text that a human will read later passes
:func:`check_text` where it enters (a request, the admin API, a plugin's answer) and
:func:`clean_text` where it is restored from the store; every renderer passes it through
:func:`printable` where it leaves (the console escapes its markup as well),
so that text stored before this rule existed is harmless as well.

The rule:

- control characters (C0 and C1, ESC, BEL, DEL) and bidirectional overrides and isolates
  (U+202A-202E, U+2066-2069) are refused at entry (``invalid_text``) and removed elsewhere;
- invisible formatting characters (zero-width space, joiners, marks, word joiner, BOM, soft
  hyphen ...) are removed;
- text is normalised to NFC, runs of white space become one space (descriptions keep line
  breaks), and a character carries at most :data:`MAX_MARKS` combining marks;
- length is bounded in display cells (wide East Asian characters count two, marks none).

Pure functions of the standard library only: the client, the console and ``salonctl`` import
this module without the daemon's runtime.
"""

from __future__ import annotations

import re
import unicodedata

MAX_MARKS = 3
"""Combining marks kept on one character (more is "Zalgo" text that draws over its neighbours)."""

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
    "\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0"
)
_SPACES = re.compile(r"\s+")


class TextError(ValueError):
    """Text was refused; the message names the field and the offending character."""

    def __init__(self, field: str, message: str, *, bad_characters: bool = False) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.bad_characters = bad_characters
        """True when refused for a character it holds (``invalid_text``), not for its length."""


def is_control(char: str) -> bool:
    """C0, DEL, C1 (category Cc) or a bidirectional override/isolate."""
    return unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS


def is_invisible(char: str) -> bool:
    """A character that draws nothing but changes how text compares or is laid out."""
    if char in _INVISIBLE:
        return True
    category = unicodedata.category(char)
    # Format characters (Cf) other than the bidi controls, private use, unassigned, surrogates.
    return category in ("Cf", "Co", "Cn", "Cs")


def cell_width(text: str) -> int:
    """Terminal cells ``text`` occupies: wide/fullwidth characters two, combining marks none."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _limit_marks(text: str) -> str:
    kept: list[str] = []
    marks = 0
    for char in text:
        # A zero-width combiner that is not category Mn/Me (a spacing mark with a combining
        # class, such as U+1D165) counts as a mark too: otherwise it could pile up without
        # limit on one cell, and a text's bytes would not be bounded by its width.
        if unicodedata.category(char) in ("Mn", "Me") or unicodedata.combining(char):
            marks += 1
            if marks > MAX_MARKS:
                continue
        else:
            marks = 0
        kept.append(char)
    return "".join(kept)


def _collapse(text: str, multiline: bool) -> str:
    if not multiline:
        return _SPACES.sub(" ", text).strip()
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(lines).strip()


def clean_text(value: str, *, multiline: bool = False) -> str:
    """``value`` with every control, bidi and invisible character removed, NFC, spaces folded.

    Never refuses: for text that cannot be sent back (restored from the store, a plugin's
    answer). Line breaks survive only when ``multiline``; other controls are dropped.
    """
    if multiline:
        value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    else:
        value = value.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    value = unicodedata.normalize("NFC", value)
    value = "".join(c for c in value if (c == "\n" or not is_control(c)) and not is_invisible(c))
    return _collapse(_limit_marks(value), multiline)


def fit_text(value: str, max_width: int, *, multiline: bool = False) -> str:
    """:func:`clean_text`, then cut to ``max_width`` cells (for text that must be kept)."""
    cleaned = clean_text(value, multiline=multiline)
    if cell_width(cleaned) <= max_width:
        return cleaned
    kept: list[str] = []
    width = 0
    for char in cleaned:
        width += cell_width(char)
        if width > max_width:
            break
        kept.append(char)
    return "".join(kept).rstrip()


def check_text(
    field: str,
    value: object,
    *,
    max_width: int,
    min_width: int = 1,
    multiline: bool = False,
) -> str:
    """The cleaned form of ``value``, or :class:`TextError` naming ``field`` and why.

    Refused: anything but a string, a control or bidirectional override character (named by
    its code point, so the sender can tell what to remove), and text wider than ``max_width``
    cells or narrower than ``min_width`` once cleaned. Invisible characters are removed quietly.
    """
    if not isinstance(value, str):
        raise TextError(field, "must be a string")
    allowed = "\n\r\t" if multiline else "\t"
    for char in value:
        if is_control(char) and char not in allowed:
            raise TextError(
                field,
                f"contains control character U+{ord(char):04X}, which is not allowed",
                bad_characters=True,
            )
    cleaned = clean_text(value, multiline=multiline)
    width = cell_width(cleaned)
    if width < min_width:
        if not cleaned and value.strip():
            raise TextError(field, "holds only invisible characters", bad_characters=True)
        raise TextError(field, f"must be at least {min_width} characters")
    if width > max_width:
        raise TextError(field, f"must be at most {max_width} characters wide (got {width})")
    return cleaned


def printable(value: object, *, multiline: bool = False) -> str:
    """``value`` safe to write to a terminal: controls and bidi characters shown as U+FFFD.

    Renderers use this even for text that passed :func:`check_text`, so that data stored
    before the rule existed cannot move the cursor, retitle a window or reverse a line.
    """
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    for char in text:
        if multiline and char == "\n":
            out.append(char)
        elif is_control(char):
            out.append("\ufffd")
        elif not is_invisible(char):
            out.append(char)
    return _limit_marks("".join(out))

"""Audio level meters for the stage, from RFC 6464 levels (0 loudest .. 127 silence, -dBov)."""

from __future__ import annotations

from rich.text import Text

WIDTH = 10
FLOOR = 80
"""Levels at or above this many -dBov show an empty meter (room tone, not speech)."""


def loudness(level: int | None) -> float:
    """0.0 (silence) .. 1.0 (full scale) for a -dBov level."""
    if level is None:
        return 0.0
    return max(0.0, min(1.0, (FLOOR - level) / FLOOR))


def meter(level: int | None, speaking: bool, width: int = WIDTH) -> Text:
    """``▮▮▮▮▮▯▯▯▯▯ -32`` with the filled part green while speaking, dim otherwise."""
    filled = round(loudness(level) * width)
    text = Text()
    text.append("▮" * filled, style="bold green" if speaking else "dim green")
    text.append("▯" * (width - filled), style="dim")
    text.append(f" {-level:>4}" if level is not None else "    -", style="dim")
    if speaking:
        text.append(" speaking", style="bold green")
    return text

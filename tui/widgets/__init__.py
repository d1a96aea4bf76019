"""Widgets of the console, by screen area."""

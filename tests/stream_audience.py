"""Several ``salon join`` listeners in one process: the stream end-to-end test's audience.

``python -m tests.stream_audience LOG_DIR NAME... -- JOIN_ARGS`` runs, for each NAME, the CLI's
own ``join`` command (``JOIN_ARGS`` with ``{name}`` replaced) concurrently on one event loop.
Each listener has its own QUIC connection, its own stream player and HTTP session (it fetches
through the cache on its own), its own recording; what it prints goes to ``LOG_DIR/NAME.log``.
A loaded two-core machine then runs a few processes instead of one per listener.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import sys
from pathlib import Path
from typing import TextIO

from salon.client.cli import COMMANDS, build_parser

_log: contextvars.ContextVar[TextIO] = contextvars.ContextVar("log")


class _PerListener(io.TextIOBase):
    """``sys.stderr`` that writes to the log of the listener whose task is printing."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback

    def write(self, text: str) -> int:
        return _log.get(self.fallback).write(text)

    def flush(self) -> None:
        _log.get(self.fallback).flush()


async def _listener(log: TextIO, argv: list[str]) -> int:
    _log.set(log)  # this task and those it starts print here
    args = build_parser().parse_args(argv)
    try:
        return await COMMANDS[args.command](args)
    except Exception as exc:
        print(f"salon: {exc!r}", file=sys.stderr, flush=True)
        return 1


async def _main(log_dir: Path, names: list[str], template: list[str]) -> int:
    logs = [(log_dir / f"{name}.log").open("w", buffering=1) for name in names]
    try:
        codes = await asyncio.gather(
            *(
                _listener(log, [part.replace("{name}", name) for part in template])
                for name, log in zip(names, logs, strict=True)
            )
        )
    finally:
        for log in logs:
            log.close()
    return max(codes)


def main() -> int:
    separator = sys.argv.index("--")
    log_dir, *names = sys.argv[1:separator]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("quic").setLevel(logging.ERROR)
    sys.stderr = _PerListener(sys.stderr)
    return asyncio.run(_main(Path(log_dir), names, sys.argv[separator + 1 :]))


if __name__ == "__main__":
    sys.exit(main())

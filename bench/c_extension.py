"""salond's CPU per copy with its C extension against the same salond without it, in one run.

The load runs of ``bench/scenarios.py`` (real salond, real listener processes, loopback),
alternating salond with the extension and salond started with ``SALON_C_EXTENSION=0`` (the
Python paths: sealing through ``cryptography``, opening through aioquic, ``sendmmsg`` through
``ctypes``), ``--rounds`` times each, so that a busy spell of a shared machine falls on both.
The load generator is the same in both (the variable is set for the whole run of a side).

Run alone: ``python bench/c_extension.py [--sizes 100,200] [--speakers 1] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.scenarios import Scenario, run_scenario
from salon.quic import C_EXTENSION_VARIABLE
from salon.quic.fastpath import speedups_available


def measure(listeners: int, speakers: int, with_c: bool, window: float) -> dict[str, Any]:
    saved = os.environ.get(C_EXTENSION_VARIABLE)
    os.environ[C_EXTENSION_VARIABLE] = "1" if with_c else "0"
    load = os.getloadavg()[0]
    try:
        name = f"{speakers}x{listeners}" if speakers > 1 else f"1->{listeners}"
        scenario = Scenario(name, speakers=speakers, listeners=listeners, warmup=2.0, window=window)
        result = run_scenario(scenario, "salond")
    finally:
        if saved is None:
            os.environ.pop(C_EXTENSION_VARIABLE, None)
        else:
            os.environ[C_EXTENSION_VARIABLE] = saved
    return {
        "scenario": name,
        "c": with_c,
        "load": load,
        "cpu": result.cpu_us_per_copy,
        "packets": result.packets_per_copy,
        "loss": result.loss,
        "p99": result.p99_ms,
        "error": result.error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,200", help="listeners, comma-separated")
    parser.add_argument("--speakers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=8.0, help="measured seconds per run")
    args = parser.parse_args(argv)
    if not speedups_available():
        print("the C extension was not built: nothing to compare")
        return 1
    print(
        "| scenario | C extension | CPU µs/copy | packets/copy | loss | p99 ms | load |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    for size in (int(value) for value in args.sizes.split(",")):
        for _ in range(args.rounds):
            for with_c in (True, False):
                row = measure(size, args.speakers, with_c, args.window)
                print(
                    f"| {row['scenario']} | {'yes' if row['c'] else 'no'} | {row['cpu']:.1f}"
                    f" | {row['packets']:.2f} | {row['loss'] * 100:.2f}% | {row['p99']:.1f}"
                    f" | {row['load']:.1f} |" + (f" {row['error']}" if row["error"] else ""),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

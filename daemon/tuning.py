"""Process tuning of salond from the ``[tuning]`` configuration: event loop and garbage collector.

Both measures and their effect are in BENCHMARKS.md; the socket's batched reads and the datagram
fast path, also tuned there, belong to :mod:`salon.quic`.
"""

from __future__ import annotations

import asyncio
import gc

from salon.daemon.config import ConfigError, TuningConfig

OLDER_GENERATION_THRESHOLD = 20
"""Threshold of the two older generations when ``gc_threshold`` is set (Python's is 10)."""


def install_event_loop_policy(tuning: TuningConfig) -> str:
    """Choose the event loop ``tuning.event_loop`` names; returns the loop's name.

    uvloop reads up to dozens of UDP datagrams per poll instead of one per loop iteration, so
    the datagrams of one tick are forwarded by one flush.
    """
    if tuning.event_loop == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if tuning.event_loop == "uvloop":
            raise ConfigError("tuning.event_loop: uvloop is not installed") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def tune_garbage_collector(tuning: TuningConfig) -> bool:
    """Make the cyclic garbage collector's pauses rarer and shorter once salond has started.

    Every aioquic connection holds thousands of container objects, and a full collection walks
    them all while the event loop stands still, which showed as latency spikes in every
    listener's audio. ``gc_freeze`` moves everything alive after start-up (modules,
    configuration, plugins) out of the collector's reach, and ``gc_threshold`` raises the first
    generation's threshold so that the short-lived objects of forwarding (sent packets, frames)
    rarely start a collection. Returns whether it changed anything.
    """
    changed = False
    if tuning.gc_freeze:
        gc.collect()
        gc.freeze()
        changed = True
    if tuning.gc_threshold:
        gc.set_threshold(
            tuning.gc_threshold, OLDER_GENERATION_THRESHOLD, OLDER_GENERATION_THRESHOLD
        )
        changed = True
    return changed

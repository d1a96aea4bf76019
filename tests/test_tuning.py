"""salond's process tuning comes from the ``[tuning]`` keys, not from environment switches."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Iterator

import pytest

from salon.daemon.app import demo_companions
from salon.daemon.config import ConfigError, TuningConfig
from salon.daemon.tuning import install_event_loop_policy, tune_garbage_collector

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.fixture
def gc_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def test_garbage_collector_tuned_by_default(gc_state: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_garbage_collector(TuningConfig())
    assert gc.get_threshold() == (10000, 20, 20)
    assert gc.get_freeze_count() > 0


def test_garbage_collector_left_alone_when_switched_off(gc_state: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    assert not tune_garbage_collector(TuningConfig(gc_freeze=False, gc_threshold=0))
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_event_loop_choice() -> None:
    policy = asyncio.get_event_loop_policy()
    try:
        assert install_event_loop_policy(TuningConfig(event_loop="asyncio")) == "asyncio"
        expected = "uvloop" if HAS_UVLOOP else "asyncio"
        assert install_event_loop_policy(TuningConfig(event_loop="auto")) == expected
        if not HAS_UVLOOP:
            with pytest.raises(ConfigError, match=r"tuning\.event_loop"):
                install_event_loop_policy(TuningConfig(event_loop="uvloop"))
    finally:
        asyncio.set_event_loop_policy(policy)


def test_the_demo_bot_is_composed_through_the_entry_point() -> None:
    """salond --demo gets the client's bot from package metadata, never by importing it."""
    from salon.client.bot import run_demo_bot

    assert demo_companions() == [run_demo_bot]

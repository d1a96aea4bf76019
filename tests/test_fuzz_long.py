"""The longer fuzz run: the parsers and the core's action API with many more examples.

The ordinary hypothesis tests (``tests/test_wire_*.py``, ``tests/test_core_stateful.py``) run
in CI with hypothesis' default sizes. This module runs the same kinds of checks at a size given
by ``SALON_FUZZ_EXAMPLES`` (examples per parser test) and ``SALON_FUZZ_RUNS`` (runs of the core
state machine, 50 steps each); ``./run soak`` uses 20,000 and 2,000; CI a token size, so that
the module keeps working. Every test records how many examples it executed.

    SALON_FUZZ_EXAMPLES=100000 SALON_FUZZ_RUNS=5000 python -m pytest tests/test_fuzz_long.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis.stateful import run_state_machine_as_test

from salon.daemon.core import Identity, Limits, SalonCore
from salon.daemon.wire import messages as msg
from salon.daemon.wire.datagram import unpack_datagram
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.daemon.wire.rtp import RtpPacket, peek_media
from salon.daemon.wire.varint import encode_varint
from tests.test_core_stateful import CoreMachine
from tests.test_core_support import media_datagram
from tests.test_reliability_support import record, scaled

pytestmark = pytest.mark.soak

EXAMPLES = int(os.environ.get("SALON_FUZZ_EXAMPLES") or scaled(40, 20_000))
RUNS = int(os.environ.get("SALON_FUZZ_RUNS") or scaled(3, 2_000))
STEPS = 50

LONG = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
request_objects = st.builds(
    lambda kind, request_id, fields: {"type": kind, "id": request_id, **fields},
    st.sampled_from([*sorted(msg.REQUEST_TYPES), "ok", "nope"]) | st.text(max_size=6),
    st.integers() | st.none() | st.text(max_size=3),
    st.dictionaries(
        st.sampled_from(
            ["room", "user", "title", "topics", "policy", "max_speakers", "invite", "duration"]
        ),
        json_values,
        max_size=4,
    ),
)


def test_control_messages_raise_only_message_error():
    executed = 0

    @LONG
    @given(st.binary(max_size=300) | request_objects.map(lambda o: json.dumps(o).encode()))
    def check(data: bytes) -> None:
        nonlocal executed
        executed += 1
        try:
            request = msg.decode_request(data)
        except msg.MessageError as exc:
            assert isinstance(exc.code, msg.ErrorCode)
            assert exc.request_id is None or 0 <= exc.request_id <= msg.MAX_REQUEST_ID
        else:
            assert 0 <= request.id <= msg.MAX_REQUEST_ID
        try:
            msg.decode_server_message(data)
        except msg.MessageError:
            pass

    check()
    record("fuzz_control_messages", examples=executed, exceptions_other_than_message_error=0)


def test_framing_reassembles_or_raises_wire_error():
    executed = 0

    @LONG
    @given(
        st.lists(st.binary(max_size=80), max_size=6),
        st.lists(st.integers(0, 40), max_size=8),
        st.binary(max_size=10),
    )
    def check(payloads: list[bytes], cuts: list[int], garbage: bytes) -> None:
        nonlocal executed
        executed += 1
        stream = b"".join(frame_message(p) for p in payloads)
        reader = MessageReader()
        received: list[bytes] = []
        position = 0
        for cut in [*cuts, len(stream)]:
            received += reader.feed(stream[position : position + cut])
            position += cut
        received += reader.feed(stream[position:])
        assert received == payloads and reader.pending == 0
        # Then garbage, or an announced length over 64 KiB: only WireError, never more.
        try:
            reader.feed(garbage + encode_varint(65537))
        except WireError:
            pass

    check()
    record("fuzz_framing", examples=executed, reassembly_errors=0)


def test_datagrams_and_rtp_raise_only_wire_error():
    executed = 0

    @LONG
    @given(st.binary(max_size=120), st.integers(0, 3))
    def check(data: bytes, flow: int) -> None:
        nonlocal executed
        executed += 1
        for datagram in (data, encode_varint(flow) + data):
            try:
                unpack_datagram(datagram)
            except WireError:
                pass
            try:
                peek_media(datagram)
            except WireError:
                pass
        try:
            packet = RtpPacket.parse(data)
        except WireError:
            pass
        else:
            assert RtpPacket.parse(packet.serialize()) == packet

    check()
    record("fuzz_datagrams_rtp", examples=executed, exceptions_other_than_wire_error=0)


def test_forwarder_drops_random_datagrams_without_raising():
    core = SalonCore(Limits())
    for session, user in ((1, "owner"), (2, "listener")):
        core.connect(session, Identity(user=user, display_name=user), 1000.0)
    core.handle_request(1, msg.CreateRoom(id=1, title="Fuzz", room="fuzz"), 1000.0)
    core.handle_request(1, msg.Join(id=2, room="fuzz"), 1000.0)
    core.handle_request(2, msg.Join(id=3, room="fuzz"), 1000.0)
    core.handle_request(1, msg.Unmute(id=4), 1000.0)
    (flow,) = core.forwarder.flows.values()
    # Random bytes, and datagrams close to the owner's real ones: right or wrong flow id and
    # SSRC, any level and sequence, cut anywhere, padded past the size limit.
    near = st.builds(
        lambda flow_id, ssrc, level, seq, cut, pad: (
            media_datagram(flow_id, ssrc, level, seq)[:cut] + b"\x00" * pad
        ),
        st.sampled_from([flow.flow_id, flow.flow_id + 1, 0]),
        st.sampled_from([flow.ssrc, flow.ssrc ^ 1]),
        st.none() | st.integers(0, 127),
        st.integers(0, 70000),
        st.integers(0, 120),
        st.sampled_from([0, 0, 0, 1100]),
    )
    executed = forwarded = 0
    limit = core.forwarder.max_datagram_size
    valid = media_datagram(flow.flow_id, flow.ssrc, 40, 7)

    # Whatever the size, the run includes a valid datagram and one of each near miss.
    @LONG
    @example(valid, 1)
    @example(valid, 2)
    @example(media_datagram(flow.flow_id, flow.ssrc ^ 1, 40, 7), 1)
    @example(media_datagram(flow.flow_id + 1, flow.ssrc, 40, 7), 1)
    @example(valid + b"\x00" * (limit + 1 - len(valid)), 1)
    @given(st.binary(max_size=1300) | near, st.sampled_from([1, 2, 3]))
    def check(data: bytes, session: int) -> None:
        nonlocal executed, forwarded
        executed += 1
        received = core.forwarder.received
        outlets = core.receive_datagram(session, data, 1001.0)
        assert core.forwarder.received == received + 1
        if outlets:
            # Only the owner's own flow, SSRC and session, within the size limit, get through,
            # unchanged.
            assert session == 1 and [o.session for o in outlets] == [2]
            header = peek_media(data)
            assert (header.flow_id, header.ssrc) == (flow.flow_id, flow.ssrc)
            assert len(data) <= limit
            assert list(outlets[0].queue) == [data]
            forwarded += 1
        for outlet in core.forwarder.flows[flow.flow_id].recipients:
            outlet.queue.clear()

    check()
    drops: dict[str, Any] = dict(core.forwarder.drops)
    assert forwarded > 0  # the valid datagrams do get through
    assert drops["ssrc_mismatch"] > 0 and drops["unknown_flow"] > 0 and drops["too_large"] > 0
    assert drops["wrong_sender"] > 0
    record("fuzz_forwarder", examples=executed, forwarded=forwarded, drops=drops)


def test_core_action_sequences_keep_every_invariant():
    runs = requests = 0

    class Counted(CoreMachine):
        def __init__(self) -> None:
            nonlocal runs
            runs += 1
            super().__init__()

        def attempt(self, device: int, cls: type, **fields: Any) -> None:
            nonlocal requests
            requests += 1
            super().attempt(device, cls, **fields)

    run_state_machine_as_test(
        Counted,
        settings=settings(
            max_examples=RUNS,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    record(
        "fuzz_core_state_machine",
        runs=runs,
        max_steps_per_run=STEPS,
        requests=requests,
        invariants=[
            "one owner at most",
            "speakers within max_speakers",
            "no banned member present",
            "counts match members",
            "flows follow the stage",
            "sessions agree with rooms",
            "refused requests change nothing",
        ],
    )

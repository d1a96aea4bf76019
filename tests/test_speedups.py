"""The optional C extension salon.quic._speedups: built by the install, the same bytes as the
Python path, and salond's modules work without it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from aioquic.quic.crypto import CryptoContext, derive_key_iv_hp
from aioquic.tls import CipherSuite

from salon.quic import fastpath

needs_speedups = pytest.mark.skipif(
    not fastpath.speedups_available(), reason="the C extension was not built"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="built on Linux only")
def test_the_c_extension_is_built():
    """The install builds it (setup.py; ./run installs OpenSSL's headers): without this test a
    failed build would only show as skipped tests and a slower server."""
    assert fastpath.speedups_available()


@needs_speedups
@pytest.mark.parametrize(
    "suite", [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384], ids=["128", "256"]
)
def test_sealer_gives_aioquic_s_bytes(suite: CipherSuite):
    """PacketSealer.protect against CryptoContext.encrypt_packet for both AES suites, every
    packet number length, packet numbers around the wraps, short and long payloads."""
    from salon.quic import _speedups

    secret = os.urandom(48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32)
    context = CryptoContext()
    context.setup(cipher_suite=suite, secret=secret, version=1)
    sealer = _speedups.PacketSealer(*derive_key_iv_hp(cipher_suite=suite, secret=secret, version=1))
    cid = os.urandom(8)
    for pn_length in (1, 2, 3, 4):
        for packet_number in (0, 1, 255, 256, 0xFFFF, 0x10000, 0xFFFFFF, 123456789):
            truncated = packet_number & ((1 << (8 * pn_length)) - 1)
            header = bytes((0x40 | (pn_length - 1),)) + cid + truncated.to_bytes(pn_length, "big")
            for size in (4 - pn_length, 97, 1100):
                payload = os.urandom(size)
                assert sealer.protect(header, payload, packet_number) == context.encrypt_packet(
                    header, payload, packet_number
                ), (pn_length, packet_number, size)


@needs_speedups
def test_sealer_refuses_what_it_cannot_seal():
    from salon.quic import _speedups

    with pytest.raises(ValueError):
        _speedups.PacketSealer(bytes(15), bytes(12), bytes(16))
    with pytest.raises(ValueError):
        _speedups.PacketSealer(bytes(16), bytes(11), bytes(16))
    sealer = _speedups.PacketSealer(bytes(16), bytes(12), bytes(16))
    with pytest.raises(ValueError):
        sealer.protect(b"\x41" + bytes(10), b"", 1)  # too short to take the 16-byte sample
    with pytest.raises(ValueError):
        sealer.protect(b"", bytes(30), 1)


@needs_speedups
def test_sendmmsg_refuses_bad_arguments_without_sending():
    import socket

    from salon.quic import _speedups

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError):
            _speedups.sendmmsg(sock.fileno(), sock.family, [b"a", b"b"], [("127.0.0.1", 9)])
        with pytest.raises(TypeError):
            _speedups.sendmmsg(sock.fileno(), sock.family, ["text"], [("127.0.0.1", 9)])
        with pytest.raises(ValueError):
            _speedups.sendmmsg(sock.fileno(), sock.family, [b"a"], [("no.such.host", 9)])
        with pytest.raises(TypeError):
            _speedups.sendmmsg(sock.fileno(), sock.family, [b"a"], ["127.0.0.1"])
        with pytest.raises(OverflowError):
            _speedups.sendmmsg(sock.fileno(), sock.family, [b"a"], [("127.0.0.1", 70000)])


@pytest.mark.parametrize("how", ["not built", "switched off"])
def test_modules_fall_back_to_python_without_the_extension(how: str):
    """With the extension absent (its import fails) or switched off in the environment, the
    fast paths use Python and the batched send calls sendmmsg through ctypes."""
    script = textwrap.dedent(
        """
        import socket, sys
        if sys.argv[1] == "not built":
            sys.modules["salon.quic._speedups"] = None  # import fails as if never built
        from salon.quic import ackpath, fastpath, sendbatch
        assert not ackpath.C_OPEN
        assert not fastpath.speedups_available() and not fastpath.C_SEAL
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if sendbatch.sendmmsg_available():
            batch = sendbatch.MMsgSender(sender)
            assert not batch.in_c
            assert batch.send([b"one", b"two"], [receiver.getsockname()] * 2) == (2, 0)
            assert [receiver.recv(10) for _ in range(2)] == [b"one", b"two"]
        print("fallback ok")
        """
    )
    env = dict(os.environ)
    env.pop("SALON_C_EXTENSION", None)
    if how == "switched off":
        env["SALON_C_EXTENSION"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", script, how], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


@needs_speedups
@pytest.mark.parametrize(
    "suite", [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384], ids=["128", "256"]
)
def test_opener_gives_aioquic_s_plaintext_and_refuses_what_aioquic_would(suite: CipherSuite):
    """PacketOpener.open against CryptoContext.decrypt_packet: the same first byte, payload
    and full packet number (recovered from 1 to 4 bytes near the expected one); None for a
    packet changed on the way, another key phase, or one too short to sample."""
    from salon.quic import _speedups

    secret = os.urandom(48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32)
    context = CryptoContext()
    context.setup(cipher_suite=suite, secret=secret, version=1)
    keys = derive_key_iv_hp(cipher_suite=suite, secret=secret, version=1)
    opener = _speedups.PacketOpener(*keys)
    cid = os.urandom(8)
    for pn_length in (1, 2, 3, 4):
        for packet_number in (0, 1, 255, 256, 0xFFFF, 0x10000, 123456789):
            expected = max(0, packet_number - 3)
            truncated = packet_number & ((1 << (8 * pn_length)) - 1)
            header = bytes((0x40 | 0x20 | (pn_length - 1),)) + cid
            header += truncated.to_bytes(pn_length, "big")
            packet = context.encrypt_packet(header, os.urandom(40), packet_number)
            plain_header, payload, number, _ = context.decrypt_packet(packet, 9, expected)
            assert opener.open(packet, 9, expected, 0) == (plain_header[0], payload, number)
            assert number == packet_number
            assert opener.open(packet, 9, expected, 1) is None  # another key phase
            changed = bytearray(packet)
            changed[-1] ^= 1
            assert opener.open(bytes(changed), 9, expected, 0) is None
    assert opener.open(packet[:24], 9, 0, 0) is None


@needs_speedups
def test_seal_datagrams_packs_like_the_python_path():
    """PacketSealer.seal_datagrams against the Python path's frames sealed by aioquic: the
    same bytes and the same number of datagrams packed, for short and long datagrams, one
    over the peer's limit (packing stops there) and a full packet."""
    import collections

    from salon.quic import _speedups

    suite = CipherSuite.AES_128_GCM_SHA256
    secret = os.urandom(32)
    context = CryptoContext()
    context.setup(cipher_suite=suite, secret=secret, version=1)
    sealer = _speedups.PacketSealer(*derive_key_iv_hp(cipher_suite=suite, secret=secret, version=1))
    start = bytes((0x41,)) + os.urandom(8)

    def python_path(queue: collections.deque[bytes], limit: int, max_payload: int, pn: int):
        frames, size = [], 0
        for data in queue:
            length = len(data)
            frame_size = length + (3 if length >= 64 else 2)
            if length > limit or size + frame_size > max_payload:
                break
            prefix = (0x4000 | length).to_bytes(2, "big") if length >= 64 else bytes((length,))
            frames.append(b"\x31" + prefix + data)
            size += frame_size
        header = start + (pn & 0xFFFF).to_bytes(2, "big")
        return context.encrypt_packet(header, b"".join(frames), pn), len(frames)

    cases = [
        ([bytes(10)], 1200, 1100),
        ([os.urandom(63), os.urandom(64), os.urandom(200)], 1200, 1100),
        ([os.urandom(100), os.urandom(300), os.urandom(50)], 200, 1100),  # 300 > limit
        ([os.urandom(400) for _ in range(5)], 1200, 1100),  # only two fit
    ]
    for pn in (3, 0xFFFF, 0x10001):
        for datagrams, limit, max_payload in cases:
            queue = collections.deque(datagrams)
            got = sealer.seal_datagrams(start, pn, queue, limit, max_payload)
            assert got == python_path(queue, limit, max_payload, pn)
            assert list(queue) == datagrams  # left for the caller to pop
    with pytest.raises(ValueError):
        sealer.seal_datagrams(start, 1, collections.deque([bytes(300)]), 200, 1100)
    with pytest.raises(TypeError):
        sealer.seal_datagrams(start, 1, collections.deque(["text"]), 200, 1100)
    with pytest.raises(ValueError):  # the header must announce a 2-byte packet number
        sealer.seal_datagrams(b"\x40" + start[1:], 1, collections.deque([bytes(9)]), 200, 1100)


@needs_speedups
def test_opener_takes_any_bytes_from_the_network():
    """A listener's bytes are hostile: random packets of every length up to 120 bytes, and
    every offset the connection ids allow, are refused (None), never read out of bounds."""
    import random

    from salon.quic import _speedups

    opener = _speedups.PacketOpener(bytes(16), bytes(12), bytes(16))
    rng = random.Random(7)
    for length in range(121):
        for pn_offset in (1, 9, 21):
            packet = bytes(rng.getrandbits(8) for _ in range(length))
            assert opener.open(packet, pn_offset, rng.getrandbits(40), rng.getrandbits(1)) is None
    assert opener.open(bytes(100), 0, 0, 0) is None
    assert opener.open(bytes(100), 70, 0, 0) is None

"""Types of the optional C extension (``_speedups.c``): see the docstrings there."""

from collections.abc import Iterable
from typing import Any

class PacketSealer:
    def __init__(self, key: bytes, iv: bytes, hp_key: bytes) -> None: ...
    def protect(self, header: bytes, payload: bytes, packet_number: int) -> bytes: ...
    def seal_datagrams(
        self,
        header_start: bytes,
        packet_number: int,
        queue: Iterable[bytes],
        limit: int,
        max_payload: int,
    ) -> tuple[bytes, int]: ...

class PacketOpener:
    def __init__(self, key: bytes, iv: bytes, hp_key: bytes) -> None: ...
    def open(
        self, packet: bytes, pn_offset: int, expected_packet_number: int, key_phase: int
    ) -> tuple[int, bytes, int] | None: ...

def sendmmsg(fd: int, family: int, packets: list[bytes], addrs: list[Any]) -> tuple[int, int]: ...

"""A listener's link through a network namespace with the kernel's netem, where the machine allows.

:func:`netem_path` makes a network namespace joined to this one by a veth pair (a /30 of
10.77.0.0/16) and, for an impairment, puts a ``netem`` qdisc on both ends, so each direction of
that link loses, bunches or delays packets in the kernel, as a real network would. salond binds
the host end's address; a client whose socket is created :meth:`NetemPath.inside` the namespace
reaches it only through the impaired link. Sockets keep the namespace they were made in, so the
rest of the process (salond in the same event loop, other clients) is not affected.

It needs root, ``ip`` and ``tc`` (iproute2) and the netem qdisc (the kernel module
``sch_netem``, absent from many containers); :func:`netem_unavailable` says which is missing.
Without root, :mod:`tests.lossy_relay` does the same job in user space.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.lossy_relay import Impairment

_CLONE_NEWNET = 0x40000000
_paths = itertools.count()


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=10)


def _must(*command: str) -> None:
    done = _run(*command)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


def netem_unavailable() -> str | None:
    """Why :func:`netem_path` cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root (tests/lossy_relay.py covers the rest)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package iproute2)"
    probe = f"salonprobe{os.getpid()}"
    made = _run("ip", "netns", "add", probe)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    try:
        _run("ip", "-n", probe, "link", "set", "lo", "up")
        qdisc = _run("tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "loss", "1%")
        if qdisc.returncode:
            return (
                f"the netem qdisc is not available (tc: {qdisc.stderr.strip()}); the kernel "
                "module sch_netem is missing"
            )
    finally:
        _run("ip", "netns", "del", probe)
    return None


def netem_arguments(impairment: Impairment) -> list[str]:
    """``tc ... netem`` arguments for ``impairment``: random or Gilbert-Elliott loss, and
    uniformly spread extra delay (which reorders, as the relay's jitter does)."""
    arguments: list[str] = []
    if impairment.loss > 0:
        if impairment.burst_length > 1:
            # Two-state model: bad -> good with 1/burst, good -> bad so that the share of
            # packets in the bad state (all lost) is the loss rate.
            leave = 1 / impairment.burst_length
            enter = impairment.loss * leave / (1 - impairment.loss)
            arguments += ["loss", "gemodel", f"{enter * 100:.4f}%", f"{leave * 100:.4f}%"]
        else:
            arguments += ["loss", "random", f"{impairment.loss * 100:.4f}%"]
    if impairment.delay > 0 or impairment.jitter > 0:
        # The relay adds delay + uniform(0, jitter); netem's "delay d j" is d +- j, uniform.
        half = impairment.jitter * 1000 / 2
        arguments += ["delay", f"{impairment.delay * 1000 + half:.1f}ms", f"{half:.1f}ms"]
    return arguments or ["loss", "0%"]


@dataclass
class NetemPath:
    namespace: str
    host_address: str
    """The host end's address: bind salond here."""
    inner_address: str
    host_device: str
    inner_device: str

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Sockets this thread creates meanwhile belong to the namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.namespace}") as ns:
            if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test's network namespace")
            try:
                yield
            finally:
                if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original namespace")

    def packets_sent_to_namespace(self) -> int:
        """Packets the host end of the link has sent into the namespace."""
        with open(f"/sys/class/net/{self.host_device}/statistics/tx_packets") as counter:
            return int(counter.read())

    def udp_payload_sent_to_namespace(self) -> int:
        """UDP payload bytes the host end has sent into the namespace (after netem's losses):
        the device's bytes less the Ethernet, IPv4 and UDP headers of each packet."""
        with open(f"/sys/class/net/{self.host_device}/statistics/tx_bytes") as counter:
            sent = int(counter.read())
        return sent - (14 + 20 + 8) * self.packets_sent_to_namespace()

    def dropped(self) -> int:
        """Packets netem dropped so far, both directions."""
        total = 0
        for namespace in ((), ("-n", self.namespace)):
            device = self.inner_device if namespace else self.host_device
            shown = _run("tc", *namespace, "-s", "qdisc", "show", "dev", device).stdout
            for word, after in zip(shown.split(), shown.split()[1:], strict=False):
                if word == "(dropped":
                    total += int(after.rstrip(","))
        return total

    def impair(self, impairment: Impairment) -> None:
        """Apply ``impairment`` to both directions of the link (replacing the previous one)."""
        arguments = netem_arguments(impairment)
        _must("tc", "qdisc", "replace", "dev", self.host_device, "root", "netem", *arguments)
        _must(
            "tc",
            "-n",
            self.namespace,
            "qdisc",
            "replace",
            "dev",
            self.inner_device,
            "root",
            "netem",
            *arguments,
        )


@contextlib.contextmanager
def netem_path(impairment: Impairment | None = None) -> Iterator[NetemPath]:
    """A namespace and veth link, impaired by ``impairment`` when given; removed afterwards."""
    index = next(_paths)
    pid = os.getpid()
    namespace = f"salon{pid}n{index}"
    # Interface names are at most 15 bytes; addresses from the pid and index, a /30 each.
    host_device, inner_device = f"sh{pid % 100000}n{index}", f"si{pid % 100000}n{index}"
    block = (pid * 8 + index) % 16384
    base = f"10.77.{block // 64}.{(block % 64) * 4}"
    prefix = base.rsplit(".", 1)[0]
    last = int(base.rsplit(".", 1)[1])
    host_address, inner_address = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
    _must("ip", "netns", "add", namespace)
    try:
        _must("ip", "link", "add", host_device, "type", "veth", "peer", "name", inner_device)
        try:
            _must("ip", "link", "set", inner_device, "netns", namespace)
            _must("ip", "addr", "add", f"{host_address}/30", "dev", host_device)
            _must("ip", "link", "set", host_device, "up")
            _must("ip", "-n", namespace, "addr", "add", f"{inner_address}/30", "dev", inner_device)
            _must("ip", "-n", namespace, "link", "set", inner_device, "up")
            _must("ip", "-n", namespace, "link", "set", "lo", "up")
            path = NetemPath(namespace, host_address, inner_address, host_device, inner_device)
            if impairment is not None:
                path.impair(impairment)
            yield path
        finally:
            _run("ip", "link", "del", host_device)
    finally:
        _run("ip", "netns", "del", namespace)

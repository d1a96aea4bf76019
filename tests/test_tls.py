"""TLS material: the self-signed certificate, operator files, fingerprints."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from aioquic.tls import verify_certificate
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from salon.daemon import tls
from salon.daemon.config import ALPN
from salon.daemon.tls import (
    TlsError,
    ensure_certificate,
    fingerprint,
    load_material,
    parse_fingerprint,
)

FINGERPRINT_FORMAT = re.compile(r"^sha256:[0-9A-F]{2}(:[0-9A-F]{2}){31}$")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsMaterial:
    """One generated pair, shared by the tests that only read it."""
    return ensure_certificate(tmp_path_factory.mktemp("state") / "tls", "salon.example.org")


# -- generation and reuse


def test_generates_self_signed_ecdsa_p256(material: tls.TlsMaterial) -> None:
    assert material.generated
    assert material.certificate.name == tls.CERTIFICATE_FILE
    assert material.private_key.name == tls.PRIVATE_KEY_FILE
    cert = load_cert(material.certificate)
    assert cert.issuer == cert.subject
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(material.private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_certificate_names_public_name_and_loopback(material: tls.TlsMaterial) -> None:
    san = (
        load_cert(material.certificate)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.DNSName) == ["salon.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_certificate_valid_ten_years(material: tls.TlsMaterial) -> None:
    cert = load_cert(material.certificate)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert datetime.timedelta(days=3649) < lifetime <= datetime.timedelta(days=3650)


def test_fingerprint_matches_certificate_file(material: tls.TlsMaterial) -> None:
    assert FINGERPRINT_FORMAT.match(material.fingerprint)
    assert material.fingerprint == fingerprint(material.certificate.read_bytes())


def test_permissions(material: tls.TlsMaterial) -> None:
    assert mode(material.certificate.parent) == 0o700
    assert mode(material.private_key) == 0o600


def test_reused_on_later_starts(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path / "tls", "localhost")
    key_bytes = first.private_key.read_bytes()
    second = ensure_certificate(tmp_path / "tls", "localhost")
    assert first.generated and not second.generated
    assert second.fingerprint == first.fingerprint
    assert second.private_key.read_bytes() == key_bytes


def test_reuse_tightens_loose_permissions(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path / "tls", "localhost")
    os.chmod(tmp_path / "tls", 0o755)
    os.chmod(first.private_key, 0o644)
    second = ensure_certificate(tmp_path / "tls", "localhost")
    assert second.fingerprint == first.fingerprint
    assert mode(tmp_path / "tls") == 0o700
    assert mode(second.private_key) == 0o600


def test_no_temporary_files_left(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "tls", "localhost")
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["cert.pem", "key.pem"]


def test_regenerated_when_public_name_changes(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path / "tls", "old.example.org")
    second = ensure_certificate(tmp_path / "tls", "new.example.org")
    assert second.generated
    assert second.fingerprint != first.fingerprint
    assert not ensure_certificate(tmp_path / "tls", "NEW.example.org").generated


def test_ip_address_public_name(tmp_path: Path) -> None:
    material = ensure_certificate(tmp_path / "tls", "192.0.2.7")
    cert = load_cert(material.certificate)
    verify_certificate(cert, server_name="192.0.2.7", cafile=str(material.certificate))
    assert not ensure_certificate(tmp_path / "tls", "192.0.2.7").generated


@pytest.mark.parametrize("lost", [tls.CERTIFICATE_FILE, tls.PRIVATE_KEY_FILE])
def test_regenerated_when_a_file_is_lost(tmp_path: Path, lost: str) -> None:
    first = ensure_certificate(tmp_path / "tls", "localhost")
    (tmp_path / "tls" / lost).unlink()
    second = ensure_certificate(tmp_path / "tls", "localhost")
    assert second.generated and second.fingerprint != first.fingerprint
    load_material(second.certificate, second.private_key)


def test_regenerated_before_expiry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_certificate(tmp_path / "tls", "localhost")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3640)
    monkeypatch.setattr(tls, "_now", lambda: later)
    second = ensure_certificate(tmp_path / "tls", "localhost")
    assert second.generated and second.fingerprint != first.fingerprint


# -- operator files


def test_load_material(material: tls.TlsMaterial) -> None:
    loaded = load_material(material.certificate, material.private_key)
    assert loaded == tls.TlsMaterial(
        material.certificate, material.private_key, material.fingerprint, generated=False
    )


def test_mismatched_pair_names_both_files(material: tls.TlsMaterial, tmp_path: Path) -> None:
    other = ensure_certificate(tmp_path / "tls", "localhost")
    with pytest.raises(TlsError, match="does not match") as info:
        load_material(material.certificate, other.private_key)
    assert str(other.private_key) in str(info.value)
    assert str(material.certificate) in str(info.value)


def test_missing_files(material: tls.TlsMaterial, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"nope\.pem: certificate file not found"):
        load_material(tmp_path / "nope.pem", material.private_key)
    with pytest.raises(TlsError, match=r"nope\.key: private key file not found"):
        load_material(material.certificate, tmp_path / "nope.key")


def test_swapped_or_garbage_files(material: tls.TlsMaterial, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="not a PEM certificate"):
        load_material(material.private_key, material.private_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(TlsError, match=r"garbage\.pem: not a PEM private key"):
        load_material(material.certificate, garbage)


def test_encrypted_key_refused(material: tls.TlsMaterial, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(material.private_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsError, match="encrypted"):
        load_material(material.certificate, encrypted)


def test_chain_file_uses_leaf(material: tls.TlsMaterial, tmp_path: Path) -> None:
    other = ensure_certificate(tmp_path / "tls", "localhost")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(material.certificate.read_bytes() + other.certificate.read_bytes())
    assert load_material(chain, material.private_key).fingerprint == material.fingerprint


# -- fingerprints


def test_fingerprint_of_object_der_and_pem_agree(material: tls.TlsMaterial) -> None:
    cert = load_cert(material.certificate)
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert fingerprint(cert) == fingerprint(der) == fingerprint(pem) == material.fingerprint


def test_fingerprint_known_value(material: tls.TlsMaterial) -> None:
    import hashlib

    der = load_cert(material.certificate).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    expected = "sha256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    assert fingerprint(der) == expected


def test_fingerprint_of_garbage() -> None:
    with pytest.raises(TlsError, match="not a certificate"):
        fingerprint(b"\x30\x03\x02\x01\x00")
    with pytest.raises(TlsError, match="not a certificate"):
        fingerprint(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_parse_fingerprint_formats(material: tls.TlsMaterial) -> None:
    canonical = material.fingerprint
    bare = canonical.removeprefix("sha256:")
    variants = [
        canonical,
        canonical.lower(),
        bare,
        bare.replace(":", ""),
        bare.replace(":", "").lower(),
        "SHA256:" + bare.replace(":", ""),
        f"  {canonical}\n",
    ]
    for text in variants:
        assert parse_fingerprint(text) == canonical, text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sha256:AB:CD", "expected 64 hex digits"),
        ("", "expected 64 hex digits"),
        ("AB" * 33, "got 66"),
        ("sha1:" + "AB" * 32, "hexadecimal"),
        ("ZZ" * 32, "hexadecimal"),
    ],
)
def test_parse_fingerprint_errors(text: str, message: str) -> None:
    with pytest.raises(TlsError, match=message):
        parse_fingerprint(text)
    assert issubclass(TlsError, ValueError)


# -- aioquic accepts the material


def test_aioquic_load_cert_chain(material: tls.TlsMaterial) -> None:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.load_cert_chain(material.certificate, material.private_key)
    assert configuration.certificate is not None
    assert fingerprint(configuration.certificate) == material.fingerprint


def test_aioquic_client_verifies_generated_certificate(material: tls.TlsMaterial) -> None:
    cert = load_cert(material.certificate)
    for name in ("salon.example.org", "localhost", "127.0.0.1", "::1"):
        verify_certificate(cert, server_name=name, cafile=str(material.certificate))


def test_quic_handshake_with_generated_certificate(material: tls.TlsMaterial) -> None:
    """A full in-memory TLS 1.3 handshake: the server signs with the generated P-256 key."""
    server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_config.load_cert_chain(material.certificate, material.private_key)
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], server_name="salon.example.org"
    )
    client_config.load_verify_locations(cafile=str(material.certificate))
    client = QuicConnection(configuration=client_config)
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client_addr, server_addr = ("10.0.0.1", 1234), ("10.0.0.2", 4460)
    now = 0.0
    client.connect(server_addr, now=now)
    completed = []
    for _ in range(10):
        now += 0.01
        for data, _addr in client.datagrams_to_send(now=now):
            server.receive_datagram(data, client_addr, now=now)
        for data, _addr in server.datagrams_to_send(now=now):
            client.receive_datagram(data, server_addr, now=now)
        while (event := client.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                completed.append(event)
        if completed:
            break
    assert completed and completed[0].alpn_protocol == ALPN
    peer = client.tls._peer_certificate
    assert peer is not None and fingerprint(peer) == material.fingerprint

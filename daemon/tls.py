"""TLS material for salond: operator-provided files, or a self-signed certificate kept in state.

Clients of a server with a self-signed certificate pin it by its fingerprint, written
``sha256:AB:CD:...`` (SHA-256 of the DER certificate), which salond prints at start.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERTIFICATE_FILE",
    "PRIVATE_KEY_FILE",
    "TlsError",
    "TlsMaterial",
    "WebCertificate",
    "ensure_certificate",
    "ensure_web_certificate",
    "fingerprint",
    "load_material",
    "parse_fingerprint",
]

log = logging.getLogger("salon.tls")

CERTIFICATE_FILE = "cert.pem"
PRIVATE_KEY_FILE = "key.pem"

VALIDITY = datetime.timedelta(days=3650)
"""Lifetime of a generated certificate: clients pin it, so it should outlive the server."""

RENEW_BEFORE = datetime.timedelta(days=30)
"""A generated certificate this close to expiry is replaced at start."""

WEB_CERTIFICATE_FILE = "web-cert.pem"
WEB_PRIVATE_KEY_FILE = "web-key.pem"

WEB_VALIDITY = datetime.timedelta(days=13)
"""Lifetime of the certificate browsers pin (WebTransport ``serverCertificateHashes``): the
browser refuses one valid for more than 14 days in all, and the start is backdated an hour."""

WEB_RENEW_BEFORE = datetime.timedelta(days=4)
"""The web certificate is replaced this long before it expires (at start and while running)."""

FINGERPRINT_PREFIX = "sha256:"

_DIGEST_SIZE = 32


class TlsError(ValueError):
    """Unusable TLS material or fingerprint; the message names the files involved."""


@dataclass(frozen=True)
class TlsMaterial:
    """A certificate and its private key, ready for ``QuicConfiguration.load_cert_chain``."""

    certificate: Path
    """PEM certificate file (leaf first)."""
    private_key: Path
    """PEM private key file."""
    fingerprint: str
    """``sha256:`` fingerprint of the leaf certificate, for clients to pin."""
    generated: bool
    """True when this call generated a new self-signed certificate."""


# -- fingerprints ---------------------------------------------------------------------------


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """``sha256:`` + uppercase hex pairs joined by ``:`` of a certificate (object, DER or PEM).

    For PEM holding a chain, the first (leaf) certificate counts.
    """
    if isinstance(cert, x509.Certificate):
        der = cert.public_bytes(serialization.Encoding.DER)
    else:
        try:
            if cert.lstrip().startswith(b"-----BEGIN"):
                der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
            else:
                der = x509.load_der_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            raise TlsError(f"not a certificate: {exc}") from None
    return _format(hashlib.sha256(der).digest())


def parse_fingerprint(text: str) -> str:
    """Normalize a SHA-256 fingerprint given with or without ``sha256:`` and colons, in any case.

    Returns the canonical form produced by :func:`fingerprint`.
    """
    value = text.strip()
    if value.lower().startswith(FINGERPRINT_PREFIX):
        value = value[len(FINGERPRINT_PREFIX) :]
    digits = value.replace(":", "")
    if not re.fullmatch(r"[0-9A-Fa-f]*", digits):
        raise TlsError(f"fingerprint {text!r}: expected hexadecimal digits")
    if len(digits) != 2 * _DIGEST_SIZE:
        raise TlsError(
            f"fingerprint {text!r}: expected {2 * _DIGEST_SIZE} hex digits (SHA-256),"
            f" got {len(digits)}"
        )
    return _format(bytes.fromhex(digits))


def _format(digest: bytes) -> str:
    return FINGERPRINT_PREFIX + ":".join(f"{b:02X}" for b in digest)


# -- loading --------------------------------------------------------------------------------

_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

# Key types TLS 1.3 (and aioquic) can sign handshakes with.
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def load_material(cert_path: Path, key_path: Path) -> TlsMaterial:
    """Check that ``cert_path`` holds a PEM certificate and ``key_path`` its private key."""
    cert = _read_certificate(cert_path)
    key = _read_private_key(key_path)
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TlsError(
            f"{key_path}: this private key does not match the certificate in {cert_path}"
        )
    return TlsMaterial(
        certificate=cert_path, private_key=key_path, fingerprint=fingerprint(cert), generated=False
    )


def _read_certificate(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{path}: not a PEM certificate") from None
    return certs[0]


def _read_private_key(path: Path) -> _PrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(
            f"{path}: the private key is encrypted; salond needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"{path}: not a PEM private key") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise TlsError(
            f"{path}: unsupported key type {type(key).__name__} (use ECDSA, RSA or Ed25519)"
        )
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise TlsError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the certificate browsers pin ----------------------------------------------------------


@dataclass(frozen=True)
class WebCertificate:
    """The short-lived self-signed certificate WebTransport sessions get in development."""

    material: TlsMaterial
    sha256: bytes
    """SHA-256 of the DER certificate: the value a page passes in ``serverCertificateHashes``."""
    expires: datetime.datetime


def ensure_web_certificate(
    tls_dir: Path, public_name: str, now: datetime.datetime | None = None
) -> WebCertificate:
    """The ECDSA P-256 certificate browsers pin by hash, generated or rotated as needed.

    Browsers accept a pinned certificate only if it is ECDSA and valid for at most 14 days, so
    it cannot be the long-lived one ``salon/1`` clients pin: it lives beside it and is replaced
    :data:`WEB_RENEW_BEFORE` before it expires. Pages fetch its hash anew when they connect.
    """
    now = now or _now()
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    cert_path = tls_dir / WEB_CERTIFICATE_FILE
    key_path = tls_dir / WEB_PRIVATE_KEY_FILE
    if cert_path.exists() or key_path.exists():
        reason = _reason_to_replace(cert_path, key_path, public_name, WEB_RENEW_BEFORE, now)
        if reason is None:
            return _web_certificate(load_material(cert_path, key_path))
        log.info("replacing the web certificate in %s: %s", tls_dir, reason)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, public_name, WEB_VALIDITY, now)
    material = _write_pair(cert_path, key_path, key, cert)
    log.info("generated a web certificate valid until %s", cert.not_valid_after_utc)
    return _web_certificate(material)


def _web_certificate(material: TlsMaterial) -> WebCertificate:
    cert = _read_certificate(material.certificate)
    der = cert.public_bytes(serialization.Encoding.DER)
    return WebCertificate(material, hashlib.sha256(der).digest(), cert.not_valid_after_utc)


# -- self-signed certificate ----------------------------------------------------------------


def ensure_certificate(tls_dir: Path, public_name: str) -> TlsMaterial:
    """The self-signed certificate in ``tls_dir``, generated on first use and reused after.

    A new one replaces the old when the files are missing or unusable, when the certificate
    does not name ``public_name``, or when it expires within :data:`RENEW_BEFORE`; the
    fingerprint then changes, so clients that pinned the old one must pin again.
    """
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir leaves an existing directory's mode alone; the key must not be listable by others.
    os.chmod(tls_dir, 0o700)
    cert_path = tls_dir / CERTIFICATE_FILE
    key_path = tls_dir / PRIVATE_KEY_FILE
    if cert_path.exists() or key_path.exists():
        reason = _reason_to_replace(cert_path, key_path, public_name, RENEW_BEFORE, _now())
        if reason is None:
            os.chmod(key_path, 0o600)
            return load_material(cert_path, key_path)
        log.warning("replacing the self-signed certificate in %s: %s", tls_dir, reason)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, public_name, VALIDITY, _now())
    material = _write_pair(cert_path, key_path, key, cert)
    log.info("generated a self-signed certificate for %s: %s", public_name, material.fingerprint)
    return TlsMaterial(material.certificate, material.private_key, material.fingerprint, True)


def _write_pair(
    cert_path: Path, key_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> TlsMaterial:
    # Key first: a crash in between leaves no certificate, which regenerates next time.
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    material = load_material(cert_path, key_path)
    return TlsMaterial(material.certificate, material.private_key, material.fingerprint, True)


def _reason_to_replace(
    cert_path: Path,
    key_path: Path,
    public_name: str,
    renew_before: datetime.timedelta,
    now: datetime.datetime,
) -> str | None:
    try:
        material = load_material(cert_path, key_path)
    except TlsError as exc:
        return str(exc)
    cert = _read_certificate(material.certificate)
    if cert.not_valid_after_utc - now < renew_before:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    if not _names(cert, public_name):
        return f"it does not name {public_name!r}"
    return None


def _names(cert: x509.Certificate, name: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name.lower() in (n.lower() for n in san.get_values_for_type(x509.DNSName))
    return address in san.get_values_for_type(x509.IPAddress)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _self_signed(
    key: ec.EllipticCurvePrivateKey,
    public_name: str,
    validity: datetime.timedelta,
    now: datetime.datetime,
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for name in (public_name, "localhost", "127.0.0.1", "::1"):
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            general = x509.DNSName(name)
        if general not in names:
            names.append(general)
    # The common name is limited to 64 characters; clients match the SAN anyway.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, public_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Salon (self-signed)"),
        ]
    )
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # An hour of slack for clients whose clock is a little behind.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, the file never readable beyond ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

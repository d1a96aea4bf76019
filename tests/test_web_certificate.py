"""The short-lived certificate browsers pin by hash (WebTransport serverCertificateHashes)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from salon.daemon.tls import (
    WEB_CERTIFICATE_FILE,
    ensure_certificate,
    ensure_web_certificate,
)

BROWSER_LIMIT = datetime.timedelta(days=14)


def test_web_certificate_is_ecdsa_p256_and_valid_for_at_most_14_days(tmp_path):
    web = ensure_web_certificate(tmp_path, "localhost")
    cert = x509.load_pem_x509_certificate((tmp_path / WEB_CERTIFICATE_FILE).read_bytes())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= BROWSER_LIMIT
    assert web.expires == cert.not_valid_after_utc
    # It is not the certificate salon/1 clients pin, which lives for years.
    main = ensure_certificate(tmp_path, "localhost")
    assert main.certificate != web.material.certificate


def test_web_certificate_is_kept_then_rotated_before_it_expires(tmp_path):
    first = ensure_web_certificate(tmp_path, "localhost")
    assert ensure_web_certificate(tmp_path, "localhost").sha256 == first.sha256
    nine_days_later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=9.5)
    rotated = ensure_web_certificate(tmp_path, "localhost", now=nine_days_later)
    assert rotated.sha256 != first.sha256
    assert rotated.expires > first.expires


def test_web_certificate_names_the_public_name(tmp_path):
    first = ensure_web_certificate(tmp_path, "localhost")
    renamed = ensure_web_certificate(tmp_path, "salon.example.org")
    assert renamed.sha256 != first.sha256
    cert = x509.load_pem_x509_certificate((tmp_path / WEB_CERTIFICATE_FILE).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "salon.example.org" in san.get_values_for_type(x509.DNSName)

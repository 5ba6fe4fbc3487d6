"""TLS for ``control_plane.serve``: a TLS 1.3-only OpenSSL context, and self-signed certificates for local use
and tests (made with ``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL


class Tls13ContextFactory:
    """A server context that speaks TLS 1.3 and nothing else: minimum and maximum protocol version TLS 1.3, so a
    TLS 1.2 (or older) ClientHello fails the handshake. Twisted's SSL endpoints call ``getContext``."""

    def __init__(self, *, cert_file: str, key_file: str) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.use_certificate_chain_file(cert_file)  # the server's certificate, then its intermediates
        context.use_privatekey_file(key_file)
        context.check_privatekey()
        # websockets upgrade over HTTP/1.1, which is all Daphne speaks without its HTTP/2 extra
        context.set_alpn_select_callback(lambda connection, offered: b"http/1.1" if b"http/1.1" in offered
                                         else SSL.NO_OVERLAPPING_PROTOCOLS)
        self._context = context

    def getContext(self) -> SSL.Context:  # noqa: N802 (Twisted's interface)
        return self._context


def self_signed_certificate_write(*, cert_path: Path, key_path: Path,
                                  hostnames: Sequence[str] = ("localhost",),
                                  addresses: Sequence[str] = ("127.0.0.1", "::1"), days: int = 30) -> None:
    """Write a self-signed certificate (ECDSA P-256) for the names and addresses, and its key (mode 0600).
    For local use and tests only: clients must be told to trust this very certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else addresses[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alternative_names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

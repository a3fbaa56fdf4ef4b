"""Real X.509 certificates for the emulator: its HTTPS endpoint and each simulated RDP listener.

One RSA key is generated per process and reused: signing a certificate is then ~1 ms, so a 10,000-VM
fleet stays cheap, while each certificate (serial, subject, dates) and so its thumbprint is distinct.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import threading
from dataclasses import dataclass, field
from functools import cache, cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_LOCK = threading.Lock()


@cache
def shared_key() -> rsa.RSAPrivateKey:
    with _KEY_LOCK:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class SimCertificate:
    """A certificate as Windows would show it in `Cert:\\LocalMachine\\Remote Desktop`.

    The X.509 itself is built on first use: a generated fleet of 10,000 VMs only pays for the
    certificates that a listener or a script actually looks at.
    """

    subject_cn: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int = field(default_factory=x509.random_serial_number)

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.not_after

    @cached_property
    def _certificate(self) -> x509.Certificate:
        key = shared_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.subject_cn)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(self.serial)
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem()

    @property
    def thumbprint(self) -> str:
        """SHA-1 of the DER, upper-case hex: the form of `SSLCertificateSHA1Hash`."""
        return self._certificate.fingerprint(hashes.SHA1()).hex().upper()


def rdp_certificate(common_name: str, not_before: dt.datetime, not_after: dt.datetime) -> SimCertificate:
    """A self-signed server-authentication certificate like the one TermService generates."""
    return SimCertificate(common_name, not_before, not_after)


@cache
def _key_pem() -> bytes:
    return shared_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@cache
def server_certificate(hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> tuple[bytes, bytes]:
    """(cert_pem, key_pem) for the emulator's HTTPS endpoints, valid for the loopback names given.

    Made once per process, so that the ARM emulator and Azurite are trusted through one CA file.
    """
    key = shared_key()
    now = dt.datetime.now(dt.UTC)
    # A distinct name per process: OpenSSL finds an issuer by its name, so two emulator processes' certificates
    # in one trust bundle must not share it.
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"rdp-remediate emulator {os.getpid()}-{secrets.token_hex(4)}")]
    )
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem()

"""Test support: a throwaway certificate authority, made fresh by each test that needs one.

Nothing here is committed as a file: :class:`CertificateAuthority` generates an EC P-256
CA, issues a server certificate for ``localhost``, ``127.0.0.1`` and ``::1``, and client
certificates whose subject names an agency (O) and an officer (CN), and writes them as
PEM files into the test's temporary directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=1)


def _private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM, and where they were written."""

    cert_pem: bytes
    key_pem: bytes
    cert_file: Path
    key_file: Path


class CertificateAuthority:
    """A CA that writes every certificate it issues into ``directory``."""

    def __init__(self, directory: Path, name: str = "Incident Ledger Test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = _private_key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        stem = name.lower().replace(" ", "-")
        self.ca_file = directory / f"{stem}.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        stem: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
    ) -> Issued:
        key = _private_key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        cert_file, key_file = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        return Issued(cert_pem, key_pem, cert_file, key_file)

    def server(
        self, stem: str = "server", name: str = "localhost", *, addresses: bool = True
    ) -> Issued:
        """A server certificate for ``name``; with ``addresses``, for localhost, also for
        127.0.0.1 and ::1."""
        addresses_ = ["127.0.0.1", "::1"] if addresses and name == "localhost" else []
        return self._issue(
            stem,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.DNSName(name),
                *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses_),
            ],
        )

    def client(self, agency: str, officer: str, *, stem: str | None = None) -> Issued:
        """A client certificate: O = the agency's code, CN = the officer."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, agency),
                x509.NameAttribute(NameOID.COMMON_NAME, officer),
            ]
        )
        return self._issue(
            stem or f"client-{agency}-{officer}", subject, ExtendedKeyUsageOID.CLIENT_AUTH, []
        )

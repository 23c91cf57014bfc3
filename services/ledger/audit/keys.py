"""The Ed25519 key that signs checkpoints: loading, development generation, public key files.

Private key files: PEM (PKCS#8, unencrypted) or the raw 32-byte seed in base64.
Public key files: PEM (SubjectPublicKeyInfo) or the raw 32-byte key in base64.
In development a pair is generated on first use in ``<LEDGER_DATA_DIR>/keys/``:
``ledger-signing.key`` (mode 0600) and ``ledger-signing.pub`` beside it, both PEM.
Production refuses to generate (``AuditSettings.from_env`` already requires the file).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from services.common.config import AuditSettings, ConfigError
from services.common.datafiles import make_private_dir
from services.ledger.seals import key_id, public_key_bytes

__all__ = ["key_id", "public_key_bytes"]

log = structlog.get_logger(__name__)


def public_key_pem(public_key: bytes) -> bytes:
    return Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_private_key(data: bytes, source: str = "key") -> Ed25519PrivateKey:
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(text, password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{source} is not an Ed25519 private key")
            return key
        seed = base64.b64decode(text, validate=True)
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ConfigError:
        raise
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{source} is not an Ed25519 private key (PEM or base64): {exc}") from exc


def parse_public_key(data: bytes, source: str = "public key") -> bytes:
    """The raw 32-byte key from PEM or base64 text."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{source} is not an Ed25519 public key")
            return public_key_bytes(key)
        raw = base64.b64decode(text, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
        return raw
    except ConfigError:
        raise
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{source} is not an Ed25519 public key (PEM or base64): {exc}") from exc


def load_public_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc}") from exc
    return parse_public_key(data, str(path))


def load_signing_key(settings: AuditSettings) -> Ed25519PrivateKey:
    """The configured key; in development, generated on first use (see the module doc)."""
    path = settings.resolved_signing_key_file
    if settings.signing_key_file is not None or settings.production:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read LEDGER_SIGNING_KEY_FILE {path}: {exc}") from exc
        return parse_private_key(data, str(path))
    if not path.exists():
        _generate(path, settings.public_key_file)
    return parse_private_key(path.read_bytes(), str(path))


def _generate(path: Path, public_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process generated it first: use that one
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = public_key_bytes(key)
    tmp = public_path.with_suffix(".pub.tmp")
    tmp.write_bytes(public_key_pem(public))
    tmp.replace(public_path)
    log.warning(
        "audit.signing_key_generated",
        private_key=str(path),
        public_key=str(public_path),
        key_id=key_id(public),
        note="development key; set LEDGER_SIGNING_KEY_FILE in production",
    )

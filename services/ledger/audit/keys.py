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
from services.ledger.seals import Sealer, key_id, public_key_bytes

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


_PEM_END = b"-----END PUBLIC KEY-----"


def parse_public_keys(data: bytes, source: str = "public keys") -> tuple[bytes, ...]:
    """Every key of a file of public keys: PEM blocks and base64 lines, in any mix; blank
    lines and lines starting with ``#`` are skipped."""
    keys: list[bytes] = []
    block: list[bytes] = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if block or line.startswith(b"-----BEGIN"):
            block.append(line)
            if line == _PEM_END:
                keys.append(parse_public_key(b"\n".join(block), f"{source}:{number}"))
                block = []
        elif line and not line.startswith(b"#"):
            keys.append(parse_public_key(line, f"{source}:{number}"))
    if block:
        raise ConfigError(f"{source}: a PEM block is not ended by {_PEM_END.decode()}")
    return tuple(dict.fromkeys(keys))


def load_public_keys(path: Path) -> tuple[bytes, ...]:
    """The public keys of a file (:func:`parse_public_keys`); at least one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the public key file {path}: {exc}") from exc
    keys = parse_public_keys(data, str(path))
    if not keys:
        raise ConfigError(f"{path} holds no public key")
    return keys


def load_retired_keys(settings: AuditSettings) -> tuple[bytes, ...]:
    """The public keys of ``LEDGER_RETIRED_SIGNING_KEYS_FILE``; none when it is unset."""
    path = settings.retired_signing_keys_file
    if path is None:
        return ()
    try:
        return load_public_keys(path)
    except ConfigError as exc:
        raise ConfigError(f"LEDGER_RETIRED_SIGNING_KEYS_FILE: {exc}") from exc


def load_sealer(settings: AuditSettings) -> Sealer:
    """The sealer of the configured key, trusting the seals of the retired keys too."""
    return Sealer(load_signing_key(settings), load_retired_keys(settings))


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


def generate_key_pair(path: Path) -> str | None:
    """A new signing key at ``path`` (mode 0600, created only if no file is there) and its
    public key beside it (``.pub``); the new key's id, or None when ``path`` exists (it is
    never overwritten: it may be the key a ledger seals with)."""
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
        return None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = public_key_bytes(key)
    public_path = path.with_suffix(".pub")
    tmp = public_path.with_suffix(".pub.tmp")
    tmp.write_bytes(public_key_pem(public))
    tmp.replace(public_path)
    return key_id(public)


def _generate(path: Path, public_path: Path) -> None:
    if generate_key_pair(path) is None:
        return  # another process generated it first: use that one
    public = load_public_key(public_path)
    log.warning(
        "audit.signing_key_generated",
        private_key=str(path),
        public_key=str(public_path),
        key_id=key_id(public),
        note="development key; set LEDGER_SIGNING_KEY_FILE in production",
    )

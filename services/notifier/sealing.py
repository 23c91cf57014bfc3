"""Webhook secrets at rest: sealed with AES-256-GCM, bound to their webhook's id.

The key is a file: ``NOTIFIER_WEBHOOK_KEY_FILE`` (32 bytes, raw or base64), required in
production; in development it is generated on first use as
``<data_dir>/keys/notifier-webhook.key`` (mode 0600, its directory 0700). The notifier
needs the secret itself to sign deliveries, so it is sealed (encrypted), not hashed: a copy
of the database alone no longer gives the secrets away.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.config import ConfigError, NotifierSettings, read_setting_file

log = structlog.get_logger(__name__)

SEALED_PREFIX = "aesgcm1:"  # stored values without it are plaintext from before sealing
KEY_BYTES = 32
NONCE_BYTES = 12


class SecretBox:
    def __init__(
        self, key: bytes, *, source: str = "NOTIFIER_WEBHOOK_KEY_FILE", generated: bool = False
    ) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"the webhook key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        #: Where the key came from, and whether a development key was made just now.
        self.source = source
        self.generated = generated

    @staticmethod
    def is_sealed(stored: str) -> bool:
        return stored.startswith(SEALED_PREFIX)

    def seal(self, secret: str, webhook_id: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), webhook_id.encode())
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str, webhook_id: str) -> str:
        """The secret; a plaintext value (stored before sealing) is returned as it is."""
        if not self.is_sealed(stored):
            return stored
        raw = base64.b64decode(stored[len(SEALED_PREFIX) :])
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], webhook_id.encode())
        except InvalidTag:
            raise ConfigError(
                f"the secret of webhook {webhook_id} does not open with this key:"
                " is NOTIFIER_WEBHOOK_KEY_FILE the key it was sealed with?"
            ) from None
        return plain.decode()


def load_secret_box(settings: NotifierSettings) -> SecretBox:
    """The configured key; in development, generated on first use (see the module doc)."""
    path = settings.resolved_webhook_key_file
    generated = False
    if settings.webhook_key_file is None and not settings.production and not path.exists():
        generated = _generate(path)
    return SecretBox(
        _parse_key(read_setting_file("NOTIFIER_WEBHOOK_KEY_FILE", path), path),
        source=f"NOTIFIER_WEBHOOK_KEY_FILE ({path})",
        generated=generated,
    )


def _parse_key(data: bytes, path: Path) -> bytes:
    if len(data) == KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"NOTIFIER_WEBHOOK_KEY_FILE: {path} must hold {KEY_BYTES} bytes, raw or in base64"
        )
    return key


def _generate(path: Path) -> bool:
    """Write a new key to ``path``; False when another process wrote one first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written in full under a private name, then linked into place: another process
    # starting at the same moment sees either no key or the whole key, never half of one.
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii") + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            return False  # another process generated it first: use that one
    finally:
        draft.unlink()
    log.warning(
        "notifier.webhook_key_generated",
        key_file=str(path),
        note="development key; set NOTIFIER_WEBHOOK_KEY_FILE in production",
    )
    return True

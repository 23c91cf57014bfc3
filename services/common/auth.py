"""Who is calling: bearer tokens and, over mutual TLS, client certificates.

Bearer tokens: a file of token hashes, one entry per agency user. The file never
holds a token, only its SHA-256. Development credentials are generated on first
start (random tokens, written next to the hashes so a new user can act at once) and
marked as such; production refuses them.

Client certificates (see docs/security.md): when the server requires and has
verified a client certificate, its subject names the caller: the organization (O) is
the agency's code in the reference data, the common name (CN) the officer or system.
:func:`authenticate` combines both:

- a certificate and no token: the principal of the certificate;
- a certificate and a token: both must name the same agency (the token's principal,
  with its officer, is used), else UNAUTHENTICATED;
- a token only: the token's principal; neither: UNAUTHENTICATED.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import secrets
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import structlog
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.config import DEVELOPMENT_FILE_MARK, ConfigError
from services.common.datafiles import make_private_dir
from services.common.errors import Unauthenticated

log = structlog.get_logger(__name__)

_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an officer of an agency."""

    agency: str
    officer: str


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``authorization: Bearer <token>`` metadata; None for anything else."""
    if not authorization or not authorization.lower().startswith(_BEARER):
        return None
    return authorization[len(_BEARER) :].strip()


_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Resolves bearer tokens to principals."""

    def __init__(
        self,
        entries: dict[str, Principal],
        *,
        development: bool,
        known_agencies: Iterable[str] | None = None,
    ) -> None:
        self._by_hash = entries
        self.development = development
        #: Agencies of the reference data (client certificates may name any of them).
        self.known_agencies = frozenset(
            known_agencies if known_agencies is not None else self.agencies()
        )
        # Hashing a token and parsing a certificate on every call are measurable: recent
        # ones are remembered (bounded; a refused certificate is not remembered).
        self._lookup = functools.lru_cache(maxsize=4096)(self._lookup_uncached)
        self.certificate_principal = functools.lru_cache(maxsize=1024)(self._certificate_principal)

    def _lookup_uncached(self, token: str) -> Principal | None:
        return self._by_hash.get(token_hash(token))

    def _certificate_principal(self, pem: bytes) -> Principal:
        return principal_from_certificate(pem, self.known_agencies)

    def __len__(self) -> int:
        return len(self._by_hash)

    def agencies(self) -> set[str]:
        return {p.agency for p in self._by_hash.values()}

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>' metadata",
                reason="CREDENTIALS_MISSING",
            )
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated(
                "the authorization metadata must be 'Bearer <token>'",
                reason="CREDENTIALS_MALFORMED",
            )
        principal = self._lookup(token)
        if principal is None:
            raise Unauthenticated("the bearer token is not valid", reason="CREDENTIALS_INVALID")
        return principal

    @classmethod
    def load(cls, path: Path, known_agencies: Iterable[str]) -> TokenStore:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the tokens file {path}: {exc}") from exc
        if _is_ledgerctl_tokens_file(raw):
            # ledgerctl reads LEDGER_TOKENS_FILE too, as the development tokens it acts with:
            # a shell that set it for ledgerctl hands the services that file.
            raise ConfigError(
                f"{path} is ledgerctl's file of development tokens (each agency's token), not "
                "the services' file of the tokens' hashes (users: agency, officer, "
                "token_sha256): unset LEDGER_TOKENS_FILE for the ledger and the notifier "
                "(development: they make $LEDGER_DATA_DIR/credentials/tokens.yaml), or name "
                "their file of hashes"
            )
        known = set(known_agencies)
        entries: dict[str, Principal] = {}
        rows: dict[str, int] = {}  # hash -> the line (index) that gave it
        users = raw.get("users") if isinstance(raw, dict) else None
        if not isinstance(users, list):
            raise ConfigError(
                f"{path}: the tokens file holds `users:`, a list with one entry per officer: "
                f"{_ENTRY_TEXT}"
            )
        for n, user in enumerate(users):
            agency, officer, digest = _user_entry(path, n, user)
            if not isinstance(agency, str) or agency not in known:
                raise ConfigError(f"{path}: users[{n}] names unknown agency {agency!r}")
            if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
                # Checked whole: 64 characters that are not hex (base64, a typo) would
                # match no token, and the officer would only ever be told "not valid".
                raise ConfigError(
                    f"{path}: users[{n}].token_sha256 is not a SHA-256 hex "
                    "(64 characters 0-9 a-f: printf %s TOKEN | sha256sum)"
                )
            key = digest.lower()
            if key in entries:
                # One token for two users: it would act as whichever line came last.
                raise ConfigError(
                    f"{path}: users[{n}] has the same token_sha256 as users"
                    f"[{rows[key]}]: each user needs a token of their own"
                )
            rows[key] = n
            entries[key] = Principal(str(agency), str(officer))
        return cls(entries, development=bool(raw.get("development", False)), known_agencies=known)


#: What an entry of the tokens file holds, said where one is malformed.
_FIELDS = {
    "agency": "the agency's code in the reference data",
    "officer": "the officer's name",
    "token_sha256": "the SHA-256 hex of the officer's bearer token (printf %s TOKEN | "
    "sha256sum), never the token itself",
}
_ENTRY_TEXT = "; ".join(f"{key}: {what}" for key, what in _FIELDS.items())


def _user_entry(path: Path, n: int, user: object) -> tuple[object, object, object]:
    """The agency, officer and token hash of ``users[n]``; a ConfigError names the entry,
    the key it lacks and what that key holds (the entry's token, if any, never shown)."""
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: users[{n}] is not an entry of keys: {_ENTRY_TEXT}")
    named = ", ".join(f"{k} {user[k]}" for k in ("agency", "officer") if k in user)
    where = f"users[{n}]" + (f" ({named})" if named else "")
    for key, what in _FIELDS.items():
        if key not in user:
            given = (
                "; it has `token` instead, which this file never holds: replace it by its "
                "token_sha256"
                if key == "token_sha256" and "token" in user
                else ""
            )
            raise ConfigError(f"{path}: {where} has no {key}: {what}{given}")
    return user["agency"], user["officer"], user["token_sha256"]


def _is_ledgerctl_tokens_file(raw: object) -> bool:
    """Whether ``raw`` is ledgerctl's development tokens file (``agency: {officer, token}``)."""
    return (
        isinstance(raw, dict)
        and "users" not in raw
        and bool(raw)
        and all(isinstance(v, dict) and "token" in v for v in raw.values())
    )


def principal_from_certificate(pem: bytes, known_agencies: Collection[str]) -> Principal:
    """The caller a verified client certificate names: O = agency code, CN = officer.

    The chain was verified by the TLS handshake; this only reads the subject. A
    certificate restricted to other uses (an extended key usage without clientAuth), a
    subject without exactly one O and one CN, or an agency that is not in the reference
    data is UNAUTHENTICATED.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated(
            "the client certificate cannot be read", reason="CERTIFICATE_INVALID"
        ) from None
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise Unauthenticated(
            "the client certificate is not for client authentication (extended key usage)",
            reason="CERTIFICATE_INVALID",
        )
    subject = certificate.subject
    agencies = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    officers = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(agencies) != 1 or len(officers) != 1:
        raise Unauthenticated(
            "the client certificate's subject must have one O (the agency code) and one CN "
            "(the officer)",
            reason="CERTIFICATE_INVALID",
        )
    agency, officer = str(agencies[0].value), str(officers[0].value)
    if agency not in known_agencies:
        raise Unauthenticated(
            f"the client certificate names agency {agency!r}, which the reference data "
            "does not know",
            reason="CERTIFICATE_AGENCY_UNKNOWN",
        )
    if not officer.strip():
        raise Unauthenticated("the client certificate's CN is empty", reason="CERTIFICATE_INVALID")
    return Principal(agency, officer)


def authenticate(
    tokens: TokenStore, authorization: str | None, client_certificate: bytes | None
) -> Principal:
    """The caller from the bearer token and/or the verified client certificate (PEM).

    See the module docstring for the rules.
    """
    if client_certificate is None:
        return tokens.authenticate(authorization)
    from_certificate = tokens.certificate_principal(client_certificate)
    if not authorization:
        return from_certificate
    from_token = tokens.authenticate(authorization)
    if from_token.agency != from_certificate.agency:
        raise Unauthenticated(
            f"the bearer token is of agency {from_token.agency!r} but the client certificate "
            f"of agency {from_certificate.agency!r}",
            reason="CREDENTIALS_MISMATCH",
        )
    return from_token


def load_or_create_tokens(
    path: Path, agencies: Iterable[str], *, may_generate: bool, production: bool
) -> TokenStore:
    """The token store at ``path``; development credentials are made on a first start.

    Several services may start at once (``make run``): generation happens under a
    file lock, so they all end up with the same credentials.
    """
    known = list(agencies)
    if not path.exists():
        if not may_generate:
            raise ConfigError(f"the tokens file {path} does not exist")
        make_private_dir(path.parent)
        with _file_lock(path.parent / ".credentials.lock"):
            if not path.exists():
                generate_dev_credentials(path.parent, known)
                log.warning(
                    "credentials.generated",
                    tokens=str(path.parent / "dev-tokens.yaml"),
                    note="development tokens, one officer per agency; never use in production",
                )
    tokens = TokenStore.load(path, known)
    if production and tokens.development:
        raise ConfigError(f"{path} holds development credentials; production needs real ones")
    if len(tokens) == 0:
        raise ConfigError(f"{path} lists no users")
    return tokens


def shared_secret(path: Path) -> bytes:
    """A random development secret kept in ``path``, created once (safely, by whichever
    service is first), its first line :data:`DEVELOPMENT_FILE_MARK` (production refuses it
    under any name)."""
    make_private_dir(path.parent)
    if not path.exists():
        # Written in full under a private name, then linked into place: another service
        # starting at the same moment reads either no file or the whole secret, never the
        # mark alone or half of the random part.
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(f"{DEVELOPMENT_FILE_MARK}\n{secrets.token_hex(32)}")
            with suppress(FileExistsError):  # another service's came first
                os.link(draft, path)
        finally:
            draft.unlink()
    text = path.read_text(encoding="ascii").strip()
    if not text:  # written by an older version that died writing it
        raise ConfigError(f"{path} is empty: delete it and start again")
    return text.encode()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def generate_dev_credentials(directory: Path, agencies: Iterable[str]) -> Path:
    """Create random development tokens for one officer per agency.

    Writes ``tokens.yaml`` (hashes, used by the services) and ``dev-tokens.yaml``
    (the tokens themselves, for the developer), both readable by the owner only.
    Returns the path of the tokens file.
    """
    make_private_dir(directory)
    users, plain = [], {}
    for agency in sorted(agencies):
        token = secrets.token_urlsafe(32)
        officer = f"dev-{agency}"
        users.append({"agency": agency, "officer": officer, "token_sha256": token_hash(token)})
        plain[agency] = {"officer": officer, "token": token}
    hashes = directory / "tokens.yaml"
    tokens = directory / "dev-tokens.yaml"
    _write_private(
        tokens,
        "# Development tokens (one officer per agency). Never use in production.\n"
        + yaml.safe_dump(plain, sort_keys=True),
    )
    _write_private(
        hashes,
        "# SHA-256 of each user's bearer token. Generated for development.\n"
        + yaml.safe_dump({"development": True, "users": users}, sort_keys=False),
    )
    return hashes


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file already existed with a wider mode
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)

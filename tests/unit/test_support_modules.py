"""Page tokens, bearer-token credentials, the board filter and reference data."""

from __future__ import annotations

import base64
import copy
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.auth import Principal, TokenStore, generate_dev_credentials, token_hash
from services.common.config import ConfigError
from services.common.errors import InvalidArgument, Unauthenticated
from services.common.pagetoken import PageTokens
from services.common.reference import ReferenceData, ReferenceDataError, Role
from services.ledger.evidence import clear_spool
from services.ledger.projections import BoardFilter
from tests.support import REFERENCE_FILE
from tests.unit.incident_builders import REF

SECRET = b"0123456789abcdef-secret"
QUERY = 'parent=regency filter=status = "REPORTED"'
CURSOR: dict[str, Any] = {"after": 42, "limit": 10}

# ----------------------------------------------------------------- page tokens


def _unpad(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_page_token_round_trip() -> None:
    tokens = PageTokens(SECRET)
    token = tokens.encode(QUERY, CURSOR)
    assert "=" not in token
    assert tokens.decode(QUERY, token) == CURSOR
    # Opaque: the cursor is not readable as plain text in the token.
    assert "after" not in token


def test_page_token_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"short")


@pytest.mark.parametrize("index", [0, 5, 15, 16, 20, -1])
def test_tampered_page_token_is_invalid(index: int) -> None:
    tokens = PageTokens(SECRET)
    raw = bytearray(_raw(tokens.encode(QUERY, CURSOR)))
    raw[index] ^= 0x01
    with pytest.raises(InvalidArgument) as caught:
        tokens.decode(QUERY, _unpad(bytes(raw)))
    assert caught.value.field == "page_token"
    assert caught.value.code == "INVALID_ARGUMENT"


def test_page_token_with_an_edited_cursor_is_invalid() -> None:
    tokens = PageTokens(SECRET)
    raw = _raw(tokens.encode(QUERY, CURSOR))
    forged = raw[:16] + raw[16:].replace(b"42", b"99")
    assert forged != raw
    with pytest.raises(InvalidArgument):
        tokens.decode(QUERY, _unpad(forged))


def test_page_token_for_another_query_is_invalid() -> None:
    tokens = PageTokens(SECRET)
    token = tokens.encode(QUERY, CURSOR)
    with pytest.raises(InvalidArgument) as caught:
        tokens.decode('parent=regency filter=status = "CLOSED"', token)
    assert "different query" in caught.value.message


def test_page_token_from_another_secret_is_invalid() -> None:
    token = PageTokens(b"another-secret-of-enough-bytes").encode(QUERY, CURSOR)
    with pytest.raises(InvalidArgument):
        PageTokens(SECRET).decode(QUERY, token)


@pytest.mark.parametrize("garbage", ["", "x", "not a token!", "%%%%", "é", "A" * 64])
def test_garbage_page_token_is_invalid(garbage: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PageTokens(SECRET).decode(QUERY, garbage, field="next")
    assert caught.value.field == "next"


# ---------------------------------------------------------------- credentials

AGENCIES = ("desk_pilkada", "polres", "inspektorat")


@pytest.fixture
def credentials(tmp_path: Path) -> tuple[TokenStore, dict[str, str], Path]:
    path = generate_dev_credentials(tmp_path / "creds", AGENCIES)
    plain = yaml.safe_load((path.parent / "dev-tokens.yaml").read_text(encoding="utf-8"))
    tokens = {agency: entry["token"] for agency, entry in plain.items()}
    return TokenStore.load(path, AGENCIES), tokens, path


def test_dev_credentials_authenticate_each_agency(
    credentials: tuple[TokenStore, dict[str, str], Path],
) -> None:
    store, tokens, _ = credentials
    assert len(store) == 3
    assert store.agencies() == set(AGENCIES)
    assert store.development is True
    for agency, token in tokens.items():
        assert store.authenticate(f"Bearer {token}") == Principal(agency, f"dev-{agency}")
    assert store.authenticate(f"bearer {tokens['polres']}").agency == "polres"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "CREDENTIALS_MISSING"),
        ("", "CREDENTIALS_MISSING"),
        ("Basic dXNlcjpwYXNz", "CREDENTIALS_MALFORMED"),
        ("Bearer", "CREDENTIALS_MALFORMED"),
        ("Token abc", "CREDENTIALS_MALFORMED"),
        ("Bearer not-a-real-token", "CREDENTIALS_INVALID"),
        ("Bearer ", "CREDENTIALS_INVALID"),
    ],
)
def test_bad_credentials_are_unauthenticated(
    credentials: tuple[TokenStore, dict[str, str], Path], header: str | None, reason: str
) -> None:
    store, _, _ = credentials
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(header)
    assert caught.value.reason == reason
    assert caught.value.code == "UNAUTHENTICATED"


def test_token_hash_of_a_token_is_not_itself_a_token(
    credentials: tuple[TokenStore, dict[str, str], Path],
) -> None:
    store, tokens, _ = credentials
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(f"Bearer {token_hash(tokens['polres'])}")
    assert caught.value.reason == "CREDENTIALS_INVALID"


def test_dev_credentials_files_are_private_and_hold_no_plain_token(
    credentials: tuple[TokenStore, dict[str, str], Path],
) -> None:
    _, tokens, path = credentials
    for name in ("tokens.yaml", "dev-tokens.yaml"):
        mode = stat.S_IMODE((path.parent / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    text = path.read_text(encoding="utf-8")
    assert len(set(tokens.values())) == 3
    for token in tokens.values():
        assert token not in text
        assert token_hash(token) in text
    raw = yaml.safe_load(text)
    assert raw["development"] is True
    assert {u["agency"] for u in raw["users"]} == set(AGENCIES)


def test_dev_credentials_stay_private_when_files_already_exist(tmp_path: Path) -> None:
    # A leftover dev-tokens.yaml (say from an earlier run, copied with default
    # permissions) must not keep its wider mode once fresh tokens go into it.
    directory = tmp_path / "creds"
    directory.mkdir()
    for name in ("tokens.yaml", "dev-tokens.yaml"):
        (directory / name).write_text("old\n", encoding="utf-8")
        (directory / name).chmod(0o644)
    generate_dev_credentials(directory, AGENCIES)
    for name in ("tokens.yaml", "dev-tokens.yaml"):
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_tokens_file_with_an_unknown_agency_is_refused(tmp_path: Path) -> None:
    path = generate_dev_credentials(tmp_path, ["polres", "nasa"])
    with pytest.raises(ConfigError, match="nasa"):
        TokenStore.load(path, ["polres"])


def test_ledgerctls_development_tokens_file_is_refused_as_such(tmp_path: Path) -> None:
    # LEDGER_TOKENS_FILE set for ledgerctl (its development tokens), then make run in the same
    # shell: the services say which file it is, not "malformed tokens file: KeyError('users')".
    generate_dev_credentials(tmp_path, ["polres"])
    with pytest.raises(ConfigError, match="ledgerctl's file of development tokens") as caught:
        TokenStore.load(tmp_path / "dev-tokens.yaml", ["polres"])
    token = yaml.safe_load((tmp_path / "dev-tokens.yaml").read_text())["polres"]["token"]
    assert token not in str(caught.value), "a token is never quoted"


def test_tokens_file_with_a_short_digest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        yaml.safe_dump({"users": [{"agency": "polres", "officer": "o", "token_sha256": "abc"}]}),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="SHA-256"):
        TokenStore.load(path, ["polres"])


def test_production_tokens_file_is_not_development(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    digest = token_hash("s3cret-token")
    path.write_text(
        yaml.safe_dump({"users": [{"agency": "polres", "officer": "o", "token_sha256": digest}]}),
        encoding="utf-8",
    )
    store = TokenStore.load(path, ["polres"])
    assert store.development is False
    assert store.authenticate("Bearer s3cret-token") == Principal("polres", "o")


# --------------------------------------------------------------- board filter


@pytest.mark.parametrize(
    ("text", "clauses"),
    [
        ("", ()),
        ("   ", ()),
        ('status = "REPORTED"', (("status", "=", "REPORTED"),)),
        ("status=RESOLVED", (("status", "=", "RESOLVED"),)),
        ("status = INCIDENT_STATUS_CLOSED", (("status", "=", "CLOSED"),)),
        ('severity != "low"', (("severity", "!=", "low"),)),
        ('lead_agency = ""', (("lead_agency", "=", ""),)),  # no lead yet
        (
            'severity = high AND kecamatan = "ipuh"',
            (("severity", "=", "high"), ("kecamatan", "=", "ipuh")),
        ),
        (
            'category="hoax" AND lead_agency = polres AND status != MERGED',
            (
                ("category", "=", "hoax"),
                ("lead_agency", "=", "polres"),
                ("status", "!=", "MERGED"),
            ),
        ),
    ],
)
def test_board_filter_parses_valid_filters(
    text: str, clauses: tuple[tuple[str, str, str], ...]
) -> None:
    assert BoardFilter.parse(text, REF).clauses == clauses


def test_board_filter_where_clause() -> None:
    parsed = BoardFilter.parse('status = "REPORTED" AND severity != low', REF)
    assert parsed.where("?") == ("status = ? AND severity <> ?", ["REPORTED", "low"])
    assert BoardFilter.parse("", REF).where("%s") == ("1=1", [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('title = "x"', "cannot filter on 'title'"),
        ('status = "OPEN"', "unknown status 'OPEN'"),
        ("severity = extreme", "unknown severity 'extreme'"),
        ('kecamatan = "Ipuh"', "unknown kecamatan 'Ipuh'"),
        ("lead_agency = fbi", "unknown lead_agency 'fbi'"),
        ('kecamatan = ""', "unknown kecamatan ''"),  # every incident has one
        ('category = "littering"', "unknown category 'littering'"),
        ('status = "REPORTED" severity = "low"', "expected AND at character 21"),
        ('status = "REPORTED" and severity = "low"', "expected AND"),
        ('status = "REPORTED" OR severity = "low"', "expected AND"),
        ('status = "REPORTED" AND', "expected `field"),
        ('AND status = "REPORTED"', "expected `field"),
        ("status", "expected `field"),
        ('status > "REPORTED"', "expected `field"),
        ('status = "REPORTED', "expected `field"),
        ("status = 'REPORTED'", "expected `field"),
        ('status = "REPORTED" ANDseverity = "low"', "expected AND"),
    ],
)
def test_board_filter_refuses_bad_filters(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        BoardFilter.parse(text, REF)
    assert caught.value.field == "filter"
    assert message in caught.value.message


def test_board_filter_refuses_overlong_filters() -> None:
    text = " AND ".join(['status = "REPORTED"'] * 50)
    assert len(text) > 1000
    with pytest.raises(InvalidArgument, match="longer than 1000"):
        BoardFilter.parse(text, REF)


# ------------------------------------------------------------- reference data


def _raw_reference() -> dict[str, Any]:
    raw = yaml.safe_load(REFERENCE_FILE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return copy.deepcopy(raw)


def test_default_reference_data_loads() -> None:
    data = ReferenceData.load(REFERENCE_FILE)
    assert data.regency == "Kabupaten Mukomuko"
    assert data.coordinator == "desk_pilkada"
    assert data.agencies["inspektorat"].role is Role.AUDITOR
    assert data.default_severity == "medium"
    assert [s.code for s in sorted(data.severities.values(), key=lambda s: s.rank)] == [
        "low",
        "medium",
        "high",
        "critical",
    ]
    assert "Medan Jaya" in data.kecamatan["ipuh"].desa
    assert ReferenceData.from_mapping(_raw_reference()) == data


def test_reference_checks_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as agency:
        REF.agency("nasa", "deciding_agencies[0]")
    assert agency.value.field == "deciding_agencies[0]"
    with pytest.raises(InvalidArgument) as desa:
        REF.check_location("ipuh", "Koto Jaya", "scope")
    assert desa.value.field == "scope.desa"
    REF.check_location("ipuh", "", "scope")  # desa is optional


def _second_coordinator(raw: dict[str, Any]) -> None:
    raw["agencies"][1]["role"] = "coordinator"


def _no_coordinator(raw: dict[str, Any]) -> None:
    raw["agencies"][0]["role"] = "responder"


def _unknown_dimension(raw: dict[str, Any]) -> None:
    raw["categories"][0]["dimension"] = "weather"


def _unlisted_default_severity(raw: dict[str, Any]) -> None:
    raw["default_severity"] = "extreme"


def _unknown_role(raw: dict[str, Any]) -> None:
    raw["agencies"][2]["role"] = "observer"


def _missing_key(raw: dict[str, Any]) -> None:
    del raw["severities"]


def _rank_not_a_number(raw: dict[str, Any]) -> None:
    raw["severities"][0]["rank"] = "first"


def _agency_without_code(raw: dict[str, Any]) -> None:
    del raw["agencies"][3]["code"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_second_coordinator, "exactly one agency must have role coordinator"),
        (_no_coordinator, "exactly one agency must have role coordinator"),
        (_unknown_dimension, "unknown IKP dimensions ['weather']"),
        (_unlisted_default_severity, "default_severity is not a listed severity"),
        (_unknown_role, "malformed reference data"),
        (_missing_key, "malformed reference data"),
        (_rank_not_a_number, "malformed reference data"),
        (_agency_without_code, "malformed reference data"),
        (lambda raw: raw.update(zone="WIB"), "zone 'WIB' is not a time zone"),
        (lambda raw: raw.update(zone="../etc/passwd"), "is not a time zone"),
    ],
)
def test_malformed_reference_data_is_refused(breakage: Any, message: str) -> None:
    raw = _raw_reference()
    breakage(raw)
    with pytest.raises(ReferenceDataError) as caught:
        ReferenceData.from_mapping(raw, source="broken.yaml")
    assert message in str(caught.value)
    assert "broken.yaml" in str(caught.value)


def test_the_regencys_zone_is_wib_unless_the_file_names_another() -> None:
    raw = _raw_reference()
    raw.pop("zone", None)
    assert ReferenceData.from_mapping(raw).zone == "Asia/Jakarta"
    raw["zone"] = "Asia/Makassar"
    assert ReferenceData.from_mapping(raw).tz().key == "Asia/Makassar"


@pytest.mark.parametrize("content", ["", "- just\n- a list\n", "agencies: [\n"])
def test_unreadable_reference_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "reference.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ReferenceDataError):
        ReferenceData.load(path)


def test_missing_reference_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReferenceDataError, match="cannot read reference data"):
        ReferenceData.load(tmp_path / "absent.yaml")


def test_the_evidence_spool_leaves_a_new_data_directory_private(tmp_path: Path) -> None:
    # On a first start the spool may be the first thing made in the data directory: the
    # directory itself must then be 0700 too, whatever the umask (docs/security.md).
    data_dir = tmp_path / "data"
    clear_spool(data_dir / "evidence-spool")
    for directory in (data_dir, data_dir / "evidence-spool"):
        mode = stat.S_IMODE(directory.stat().st_mode)
        assert mode == 0o700, f"{directory} has mode {oct(mode)}"

"""Canaries: a NIK, a phone and a name planted in a report appear in no byte the system keeps
or sends (the store's files or tables, the NATS data directory, a JSON Lines export, webhook
bodies, the services' logs), before and after erasure; and the chain verifies, in the store
and offline, before and after erasure (docs/personal-data.md)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import personal_data_pb2 as pd
from services.common.natsserver import NatsServer
from services.ledger.audit import export_jsonl, verify_export
from tests.fanout_support import (
    WEBHOOK_SECRET,
    Stack,
    WebhookReceiver,
    running_stack,
    wait_until,
    webhook_receiver,
)
from tests.support import _pg_connect, store_environment

NIK = "1706019876543210"
PHONE_E164 = "+6281398765432"
PHONE_LOCAL = "081398765432"
NAME = "Canaryputri Wulandari"
WITNESS_NAME = "Saksi Kenarisari"
#: Each canary as the bytes it could be written in: as given, normalised, UTF-16 (a driver
#: or a log could write either), and the number's national digits alone.
CANARIES = [
    text.encode(encoding)
    for text in (NIK, PHONE_E164, PHONE_LOCAL, PHONE_E164.removeprefix("+62"), NAME, WITNESS_NAME)
    for encoding in ("utf-8", "utf-16-le")
]


def hits(data: bytes) -> list[bytes]:
    return [c for c in CANARIES if c in data]


def files_with_canaries(root: Path) -> dict[str, list[bytes]]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            bad = hits(path.read_bytes())
            if bad:
                found[str(path.relative_to(root))] = bad
    return found


def postgres_rows_with_canaries(schema: str) -> dict[str, list[bytes]]:
    """Every row of every table of the schema, as text (bytea as hex and as its bytes)."""
    found: dict[str, list[bytes]] = {}
    with _pg_connect() as conn:
        tables = [
            str(row[0])
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchall()
        ]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()  # noqa: S608
            data = b"".join(
                value if isinstance(value, bytes) else str(value).encode()
                for row in rows
                for value in row
            )
            bad = hits(data)
            if bad:
                found[table] = bad
    return found


@pytest.fixture(params=["sqlite", "postgres"])
def stack_and_schema(
    request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer
) -> Iterator[tuple[Stack, str]]:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with (
        store_environment(request.param, tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url) as stack,
    ):
        yield stack, env.get("POSTGRES_SCHEMA", "")


def every_event_webhook(stack: Stack, receiver: WebhookReceiver) -> None:
    stack.stub.CreateWebhook(
        napi.CreateWebhookRequest(
            request_id=secrets.token_hex(8), url=receiver.url, secret=WEBHOOK_SECRET
        ),
        metadata=stack.ledger.md("desk_pilkada"),
    )


def verified_in_store(stack: Stack) -> None:
    report = audit_grpc.AuditServiceStub(stack.ledger.channel).VerifyLedger(
        audit.VerifyLedgerRequest(), metadata=stack.ledger.md("inspektorat"), timeout=60
    )
    assert report.ok, report.divergence


def verified_export(stack: Stack, path: Path) -> None:
    server = stack.ledger.server
    export_jsonl(server.ledger, path, workers=0)
    report = verify_export(path, server.checkpoints.public_key, workers=0)
    assert report.ok, report.divergence


def test_canaries_appear_nowhere_and_the_chain_verifies_before_and_after_erasure(
    stack_and_schema: tuple[Stack, str],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    stack, schema = stack_and_schema
    ledger = stack.ledger
    with webhook_receiver() as receiver:
        every_event_webhook(stack, receiver)
        name = ledger.report(
            "kesbangpol",
            title="Amplop dibagikan di TPS 02",
            category="money_politics",
            location=pb.Location(kecamatan="ipuh"),
            personal_data=pd.PersonalData(
                reporter=pd.Person(name=NAME, phone=PHONE_LOCAL, nik=NIK, address="Jl. Kenari"),
                witnesses=[pd.Person(name=WITNESS_NAME, phone=PHONE_E164)],
            ),
        ).incident
        read = ledger.stub.ReadPersonalData(
            api.ReadPersonalDataRequest(
                request_id=secrets.token_hex(8), name=name, purpose="verify the report"
            ),
            metadata=ledger.md("bawaslu"),
        )
        assert {s.person.name for s in read.subjects} == {NAME, WITNESS_NAME}  # it is there
        found = ledger.stub.FindPersonalData(
            api.FindPersonalDataRequest(
                request_id=secrets.token_hex(8), nik=NIK, purpose="subject access 1/2024"
            ),
            metadata=ledger.md("desk_pilkada"),
        )
        assert [s.person.phone for s in found.subjects] == [PHONE_E164]
        wait_until(lambda: len(receiver.verified()) >= 3, what="three webhook deliveries")

        verified_in_store(stack)
        verified_export(stack, tmp_path / "before.jsonl")
        assert files_with_canaries(tmp_path) == {}
        if schema:
            assert postgres_rows_with_canaries(schema) == {}

        ledger.stub.ErasePersonalData(
            api.ErasePersonalDataRequest(
                request_id=secrets.token_hex(8),
                name=name,
                legal_basis="subject's request",
                everyone=True,
            ),
            metadata=ledger.md("desk_pilkada"),
        )
        wait_until(lambda: len(receiver.verified()) >= 4, what="the erasure's delivery")
        bodies = b"".join(r.body for r in receiver.verified())
        assert b"PersonalDataErased" in bodies
        assert hits(bodies) == []

    verified_in_store(stack)
    verified_export(stack, tmp_path / "after.jsonl")
    assert files_with_canaries(tmp_path) == {}
    if schema:
        assert postgres_rows_with_canaries(schema) == {}
    assert not ledger.stub.FindPersonalData(
        api.FindPersonalDataRequest(
            request_id=secrets.token_hex(8), nik=NIK, purpose="subject access 2/2024"
        ),
        metadata=ledger.md("desk_pilkada"),
    ).subjects
    logs = capfd.readouterr()
    assert hits((logs.out + logs.err).encode()) == []
    assert "personal_data.keys_destroyed" in logs.out  # the logs were captured at all

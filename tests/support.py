"""Test support: real stores and a real ledger server on a free port."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.config import PROJECT_ROOT, LedgerSettings
from services.ledger.domain.reference import ReferenceData
from services.ledger.server import LedgerServer, build

REFERENCE_FILE = PROJECT_ROOT / "config" / "mukomuko-pilkada.yaml"
STORES = ("popo", "sqlite", "postgres")
Metadata = tuple[tuple[str, str | bytes], ...]

PG_SETTINGS = {
    "POSTGRES_HOST": os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
    "POSTGRES_PORT": os.environ.get("TEST_POSTGRES_PORT", "5432"),
    "POSTGRES_DBNAME": os.environ.get("TEST_POSTGRES_DBNAME", "test"),
    "POSTGRES_USER": os.environ.get("TEST_POSTGRES_USER", "postgres"),
    "POSTGRES_PASSWORD": os.environ.get("TEST_POSTGRES_PASSWORD", ""),
}


def reference() -> ReferenceData:
    return ReferenceData.load(REFERENCE_FILE)


def _pg_connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=PG_SETTINGS["POSTGRES_HOST"],
        port=int(PG_SETTINGS["POSTGRES_PORT"]),
        dbname=PG_SETTINGS["POSTGRES_DBNAME"],
        user=PG_SETTINGS["POSTGRES_USER"],
        password=PG_SETTINGS["POSTGRES_PASSWORD"],
        autocommit=True,
        connect_timeout=3,
    )


def require_postgres() -> None:
    """Skip when PostgreSQL is unreachable, except in CI where it must be there."""
    try:
        _pg_connect().close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI requires PostgreSQL at {PG_SETTINGS['POSTGRES_HOST']}: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")


@contextmanager
def store_environment(kind: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The eventsourcing environment for a fresh, empty store of the given kind."""
    if kind == "popo":
        yield {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    elif kind == "sqlite":
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "ledger.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    elif kind == "postgres":
        require_postgres()
        schema = f"test_{secrets.token_hex(6)}"
        with _pg_connect() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_SCHEMA": schema,
                "POSTGRES_POOL_SIZE": "8",
                "POSTGRES_MAX_OVERFLOW": "16",
                **PG_SETTINGS,
            }
        finally:
            with _pg_connect() as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        raise ValueError(kind)


@dataclass
class Client:
    """A gRPC client of a running ledger, with a token per agency."""

    server: LedgerServer
    channel: grpc.Channel
    stub: api_grpc.LedgerServiceStub
    tokens: dict[str, str]
    data_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def md(self, agency: str) -> Metadata:
        return (("authorization", f"Bearer {self.tokens[agency]}"),)

    def report(self, agency: str = "kesbangpol", **fields: object) -> api.CommandResult:
        request = api.ReportIncidentRequest(
            request_id=secrets.token_hex(8),
            title=str(fields.pop("title", "Planned mass gathering at the town square")),
            category=str(fields.pop("category", "crowd_gathering")),
            location=fields.pop("location", pb.Location(kecamatan="kota_mukomuko")),  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )
        return self.stub.ReportIncident(request, metadata=self.md(agency)).result


def settings_for(tmp_path: Path, store_env: dict[str, str], **overrides: object) -> LedgerSettings:
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "data_dir": tmp_path / "data",
        "reference_file": REFERENCE_FILE,
        "log_format": "json",
        "grace_seconds": 1.0,
        "store_env": store_env,
    }
    values.update(overrides)
    return LedgerSettings(**values)  # type: ignore[arg-type]


@contextmanager
def running_ledger(settings: LedgerSettings) -> Iterator[Client]:
    server = build(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        raw = yaml.safe_load(
            (settings.data_dir / "credentials" / "dev-tokens.yaml").read_text(encoding="utf-8")
        )
        tokens = {agency: entry["token"] for agency, entry in raw.items()}
        yield Client(
            server, channel, api_grpc.LedgerServiceStub(channel), tokens, settings.data_dir
        )
    finally:
        channel.close()
        server.stop(1.0)

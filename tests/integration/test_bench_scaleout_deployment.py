"""The bench's scale-out deployment (part 9 of ``make bench``) as it is set up: ``migrate``,
then two ledger replicas on one PostgreSQL store, sharing credentials and keys.

No other test starts it, and it was broken for several stops unseen: each replica generated
a personal data key ring of its own, and refused to start on the key table ``migrate`` had
keyed with another. Here a person named through one replica is read through the other.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest

from bench import scaleout
from bench.scenarios import read_tokens
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import personal_data_pb2 as pd
from services.common.config import LedgerSettings
from services.common.reference import ReferenceData
from tests.support import store_environment

pytestmark = pytest.mark.postgres

REPORTER = pd.Person(name="Siti Rahma", phone="+6281273456690")


def test_the_replicas_start_on_one_migrated_store_and_share_its_keys(tmp_path: Path) -> None:
    reference = ReferenceData.load(LedgerSettings().reference_file)
    with store_environment("postgres", tmp_path) as store_env:
        shared = scaleout.migrate(tmp_path / "shared", store_env, reference)
        tokens = read_tokens(shared.directory)
        with scaleout.replicas(2, tmp_path, shared, store_env) as running:
            (_, first), (_, second) = running
            with grpc.insecure_channel(first) as one, grpc.insecure_channel(second) as other:
                reported = (
                    api_grpc.LedgerServiceStub(one)
                    .ReportIncident(
                        api.ReportIncidentRequest(
                            request_id=secrets.token_hex(8),
                            title="Intimidasi pemilih di TPS 03",
                            category="crowd_gathering",
                            location=pb.Location(kecamatan="kota_mukomuko"),
                            personal_data=pd.PersonalData(reporter=REPORTER),
                        ),
                        metadata=tokens["bawaslu"],
                    )
                    .result
                )
                answer = api_grpc.LedgerServiceStub(other).ReadPersonalData(
                    api.ReadPersonalDataRequest(
                        request_id=secrets.token_hex(8),
                        name=reported.incident,
                        purpose="verify the report",
                    ),
                    metadata=tokens["bawaslu"],
                )
    assert [s.person for s in answer.subjects] == [REPORTER]

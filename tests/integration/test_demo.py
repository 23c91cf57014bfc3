"""The demo scenario against a real stack (ledger + relay + NATS + notifier); its end state."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from rich.console import Console

from demo.run import SCENARIO, play
from incidentledger_client import LedgerClient
from services.common.natsserver import NatsServer
from tests.fanout_support import running_stack
from tests.support import store_environment


def test_the_demo_plays_and_ends_in_the_expected_state(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    expect = yaml.safe_load(SCENARIO.read_text())["expect"]
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url) as stack,
    ):
        out = io.StringIO()
        svg = tmp_path / "map.svg"
        result = play(
            SCENARIO,
            stack.ledger.address,
            f"127.0.0.1:{stack.notifier.port}",
            stack.ledger.data_dir / "credentials" / "dev-tokens.yaml",
            Console(file=out, width=200),
            svg,
        )
        with LedgerClient(stack.ledger.address, stack.ledger.tokens["inspektorat"]) as auditor:
            for key, status in expect["statuses"].items():
                assert auditor.get_incident(result.incidents[key]).status == status, key
            for key, severity in expect["severities"].items():
                assert auditor.get_incident(result.incidents[key]).severity == severity, key
            for key, lead in expect["leads"].items():
                assert auditor.get_incident(result.incidents[key]).lead_agency == lead, key
            decisions = auditor.decisions_in_force(kecamatan=expect["decision_in"])
            assert [d.incident for d in decisions] == [result.incidents["rally"]]
    assert result.verify is not None and result.verify.ok
    assert len(result.notifications) >= result.steps > 20
    text = out.getvalue()
    assert (
        "notifier ->" in text and "Board" in text and "Kota Mukomuko" in text and "ok=True" in text
    )
    assert 'data-kecamatan="air_manjunto"' in svg.read_text()

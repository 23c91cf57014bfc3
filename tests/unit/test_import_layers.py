"""The import contracts of ``.importlinter`` (``make lint`` runs them with ``lint-imports``).

They hold on the code as it is, and a wrong import breaks the contract that forbids it:
each case writes one such import into a copy of the source tree and runs the same check on
the copy. Importing the domain loads no driver, transport or settings, and the event
vocabulary the notifier shares is the aggregate's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.vocabulary import EVENT_TYPES, STATUSES
from services.ledger.domain.incident import Status, incident_event_classes

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = PROJECT_ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# What the check reads: the root packages of .importlinter (eventsourcing is installed).
SOURCE_DIRS = ("services", "tests", "bench", "demo", "gen", "clients")

DOMAIN = "The ledger's domain imports no transport, driver, protobuf, settings or adapter"
INDEPENDENT = "The ledger and the notifier do not import each other"
COMMON = "services.common imports neither service"
RELAY = "The NATS relay imports neither the gRPC adapter nor gRPC"
LAYERS = (
    "The ledger is layered: server, adapters, wire and read model, read side and audit, "
    "application, domain"
)
NO_TESTS = "The services import no test, benchmark or demo code"
STANDALONE = "The client and the generated contract import no service code"
ROOM = "The situation room imports neither the ledger nor the notifier"
CONTRACTS = (DOMAIN, INDEPENDENT, COMMON, RELAY, LAYERS, NO_TESTS, STANDALONE, ROOM)


def contract_names() -> list[str]:
    text = CONFIG.read_text(encoding="utf-8")
    return re.findall(r"^name = (.+)$", text, re.MULTILINE)


def lint_imports(root: Path) -> tuple[int, dict[str, str], str]:
    """Run lint-imports on the tree at ``root`` with its ``.importlinter``, as make lint does.

    Returns the exit status, each contract's verdict (KEPT or BROKEN) and the whole output.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=os.pathsep.join(str(root / d) for d in ("", "gen", "clients/python")),
        COLUMNS="400",  # one contract per line, never wrapped
        NO_COLOR="1",
    )
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / ".importlinter")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    verdicts = dict(
        (name, verdict)
        for name, verdict in re.findall(r"^(.+) (KEPT|BROKEN)$", output, re.MULTILINE)
    )
    return done.returncode, verdicts, output


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """A copy of the source tree and of .importlinter, to write wrong imports into."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for name in SOURCE_DIRS:
        shutil.copytree(PROJECT_ROOT / name, tmp_path / name, ignore=ignore)
    shutil.copy2(CONFIG, tmp_path / ".importlinter")
    return tmp_path


def test_every_contract_is_checked_here() -> None:
    assert sorted(contract_names()) == sorted(CONTRACTS)


def test_the_contracts_hold_on_the_code() -> None:
    status, verdicts, output = lint_imports(PROJECT_ROOT)
    assert status == 0, output
    assert verdicts == dict.fromkeys(CONTRACTS, "KEPT"), output


@dataclass(frozen=True)
class WrongImport:
    module: str  # a file under the copy, to which the import is appended
    statement: str
    broken: frozenset[str]  # the contracts it must break (every other one is kept)


WRONG_IMPORTS = {
    "situation-room-imports-ledger": WrongImport(
        "services/situation_room/live.py",
        "from services.ledger.domain import incident",
        frozenset({ROOM}),
    ),
    "domain-loads-settings": WrongImport(
        "services/ledger/domain/times.py", "from services.common import config", frozenset({DOMAIN})
    ),
    # Indirect: how the domain used to load the PostgreSQL driver (errors.py imported it).
    "domain-loads-driver-indirectly": WrongImport(
        "services/common/errors.py", "import psycopg", frozenset({DOMAIN})
    ),
    "domain-loads-protobuf": WrongImport(
        "services/ledger/domain/incident.py",
        "from incidentledger.v1 import incident_pb2",
        frozenset({DOMAIN}),
    ),
    "notifier-imports-ledger-domain": WrongImport(
        "services/notifier/filters.py",
        "from services.ledger.domain import incident",
        frozenset({INDEPENDENT}),
    ),
    # From a common module neither service imports: otherwise the ledger would import the
    # notifier through it, which breaks their independence as well.
    "common-imports-notifier": WrongImport(
        "services/common/healthcheck.py",
        "from services.notifier import store",
        frozenset({COMMON}),
    ),
    "relay-imports-grpc-adapter": WrongImport(
        "services/ledger/relay.py",
        "from services.ledger.api import servicer",
        frozenset({RELAY, LAYERS}),  # also an import between the two adapters
    ),
    "application-imports-read-side": WrongImport(
        "services/ledger/application.py",
        "from services.ledger import projections",
        frozenset({LAYERS}),
    ),
    "service-imports-tests": WrongImport(
        "services/ledger/server.py", "import tests", frozenset({NO_TESTS})
    ),
    "client-imports-services": WrongImport(
        "clients/python/incidentledger_client/types.py",
        "from services.common import errors",
        frozenset({STANDALONE}),
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_IMPORTS))
def test_a_wrong_import_breaks_its_contract_and_fails_the_check(
    source_copy: Path, case: str
) -> None:
    wrong = WRONG_IMPORTS[case]
    path = source_copy / wrong.module
    assert path.is_file(), wrong.module
    with path.open("a", encoding="utf-8") as module:
        module.write(f"\n{wrong.statement}  # noqa: wrong on purpose\n")

    status, verdicts, output = lint_imports(source_copy)

    assert status == 1, output
    expected = {name: "BROKEN" if name in wrong.broken else "KEPT" for name in CONTRACTS}
    assert verdicts == expected, output


def test_importing_the_domain_loads_no_driver_transport_or_settings() -> None:
    """Every module of services.ledger.domain, imported in a fresh interpreter."""
    script = """
import importlib, json, pkgutil, sys
import services.ledger.domain as domain
for found in pkgutil.walk_packages(domain.__path__, domain.__name__ + "."):
    importlib.import_module(found.name)
print(json.dumps(sorted(sys.modules)))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(
        str(PROJECT_ROOT / d) for d in ("", "gen", "clients/python")
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert "services.ledger.domain.incident" in loaded  # the check looked at something
    forbidden_roots = {"psycopg", "grpc", "nats", "aiohttp", "sqlite3", "incidentledger"}
    forbidden = {
        "google.protobuf",
        "eventsourcing.persistence",
        "eventsourcing.postgres",
        "eventsourcing.sqlite",
        "services.common.config",
        "services.common.store_errors",
    }
    offending = sorted(
        name for name in loaded if name.split(".")[0] in forbidden_roots or name in forbidden
    )
    assert offending == []


def test_the_shared_event_vocabulary_is_the_aggregates() -> None:
    """services.common.vocabulary (what the notifier accepts) names every event class."""
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES)
    assert set(EVENT_TYPES) == {cls.__name__ for cls in incident_event_classes()}


def test_the_shared_statuses_are_the_aggregates() -> None:
    """services.common.vocabulary (the statuses the reference data may name) lists every
    status of the aggregate, in its order."""
    assert tuple(s.value for s in Status) == STATUSES

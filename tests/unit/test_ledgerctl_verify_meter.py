"""ledgerctl audit verify: the bar follows the server's progress as it comes, not only when
the result arrives."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from rich.console import Console
from rich.progress import Progress

from incidentledger_client import Unavailable
from incidentledger_client.cli.commands.audit import divergence_text, follow_verification
from incidentledger_client.cli.progress import Meter
from incidentledger_client.i18n import using
from incidentledger_client.types import Divergence, VerifyProgress, VerifyReport

REPORT = VerifyReport(ok=True, events=90, incidents=30, checkpoints_checked=1, divergence=None)


def meter() -> tuple[Meter, Progress]:
    progress = Progress(console=Console(file=io.StringIO(), force_terminal=True))
    return Meter(progress, progress.add_task("verifying", total=None, rate="")), progress


def test_the_bar_moves_with_each_progress_message_and_ends_full() -> None:
    bar, progress = meter()
    drawn: list[tuple[float, float | None]] = []

    def shown() -> None:
        task = progress.tasks[0]
        drawn.append((task.completed, task.total))

    def stream() -> Iterator[VerifyProgress | VerifyReport]:
        yield VerifyProgress(position=0, ledger_position=100, events_checked=0)
        shown()
        yield VerifyProgress(position=40, ledger_position=100, events_checked=30)
        shown()
        # Events recorded since the start are verified too: the total grows with them.
        yield VerifyProgress(position=120, ledger_position=100, events_checked=90)
        shown()
        yield REPORT

    assert follow_verification(stream(), bar) is REPORT
    shown()
    assert drawn == [(0, 100), (40, 100), (120, 120), (120, 120)]
    assert bar.items == 90  # the rate counts events checked
    assert progress.tasks[0].fields["rate"].endswith("/s")


def test_a_stream_that_ends_without_its_result_is_an_error() -> None:
    bar, _ = meter()
    with pytest.raises(Unavailable):
        follow_verification(iter([VerifyProgress(0, 10, 0)]), bar)


def test_off_a_terminal_the_meter_draws_nothing_and_the_report_is_returned() -> None:
    items: list[VerifyProgress | VerifyReport] = [VerifyProgress(0, 10, 0), REPORT]
    assert follow_verification(items, Meter()) is REPORT


def test_a_divergence_is_said_in_words_not_as_a_repr() -> None:
    divergence = Divergence(
        kind="modified",
        incident="incidents/91c8",
        version=1,
        position=1,
        detail="its hash no longer matches the previous_hash recorded by version 2",
    )
    said = divergence_text(divergence)
    assert said == (
        "an event was changed (incident incidents/91c8, version 1, position 1): its hash no "
        "longer matches the previous_hash recorded by version 2"
    )
    assert "Divergence(" not in said
    with using("id"):
        assert divergence_text(divergence).startswith("sebuah peristiwa diubah (kejadian")


def test_a_divergence_of_no_one_incident_is_said_at_its_position_alone() -> None:
    """A checkpoint's count or head concerns no incident: it read "(incident -, version 0,
    position 181)"."""
    divergence = Divergence(
        kind="deleted", incident=None, version=None, position=181, detail="1 event(s) missing"
    )
    assert (
        divergence_text(divergence) == "an event was deleted (at position 181): 1 event(s) missing"
    )
    with using("id"):
        assert "(di posisi 181)" in divergence_text(divergence)
    nowhere = Divergence(
        kind="bad_signature", incident=None, version=None, position=None, detail="no key"
    )
    assert divergence_text(nowhere) == "a signature does not verify: no key"

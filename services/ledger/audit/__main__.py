"""Audit commands: ``ledger-audit export|verify|checkpoint|sweep-evidence`` (``python -m
services.ledger.audit``).

Exit codes: 0 clean, 1 a divergence was found, 2 a usage or configuration error, 3 the
history was sealed with another key than the one given (``wrong_key``: nothing could be
checked against that key; not evidence of tampering on its own).
The store comes from the ledger's settings (``LedgerSettings.from_env``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from services.common.config import AuditSettings, ConfigError, LedgerSettings
from services.common.logging import configure_logging
from services.common.reference import ReferenceData, ReferenceDataError
from services.common.store_errors import StoreUnreachableError, logged_start_failure
from services.ledger.application import Ledger
from services.ledger.audit.checkpoints import (
    CheckpointError,
    Checkpoints,
    read_checkpoints_file,
)
from services.ledger.audit.encoding import favour_reading_thread
from services.ledger.audit.evidence_check import sweep_orphans, verify_evidence
from services.ledger.audit.export import ExportError, export_jsonl
from services.ledger.audit.keys import load_public_keys, load_retired_keys, load_signing_key
from services.ledger.audit.scan import WorkerError
from services.ledger.audit.verifier import VerifyReport
from services.ledger.audit.verify_exported import ExportFormatError, verify_export
from services.ledger.audit.verify_stored import verify_store
from services.ledger.evidence_store import EvidenceObjects

log = structlog.get_logger("services.ledger.audit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger-audit")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the incident events as JSON Lines")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument(
        "--from", dest="start", type=_position, default=0, help="first position (default 0)"
    )
    export.add_argument(
        "--to",
        dest="stop",
        type=_position,
        default=None,
        help="last position, included (default: the log's last position)",
    )
    verify = commands.add_parser("verify", help="verify the store or an export file")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", action="store_true", help="the ledger's configured store")
    source.add_argument("--export", type=Path, help="an export file")
    verify.add_argument(
        "--public-key",
        type=Path,
        required=True,
        action="append",
        help="PEM or base64; given again (or a file of several) for the keys the ledger "
        "retired: the current and the retired keys verify the history from before and "
        "after a rotation",
    )
    verify.add_argument("--checkpoints", type=Path, help="a witness's checkpoints (JSON Lines)")
    verify.add_argument(
        "--deep",
        action="store_true",
        help="with --store: also re-read every evidence file from the object store (NATS_URL) "
        "and check its digest and size",
    )
    commands.add_parser("checkpoint", help="make a signed checkpoint now")
    sweep = commands.add_parser(
        "sweep-evidence",
        help="delete evidence objects no event refers to (left by uploads cut short), once; "
        "the ledger sweeps them itself too (LEDGER_EVIDENCE_SWEEP_SECONDS)",
    )
    sweep.add_argument(
        "--grace-minutes",
        type=float,
        default=60.0,
        help="only objects stored longer ago than this (default 60)",
    )
    return parser


def _position(text: str) -> int:
    """A position of the log, as --from and --to take it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a position: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a position is not negative: {value}")
    return value


def _open_ledger(settings: LedgerSettings, *, reading: bool = False) -> Ledger:
    """The ledger over the store the settings name. ``reading`` (verify, export): a store
    that is not there is an error, never made: an auditor whose LEDGER_DATA_DIR or
    POSTGRES_SCHEMA had a typo was told "clean, 0 events" of a store the audit had just
    created."""
    env = dict(settings.store_env)
    dbname = env.get("SQLITE_DBNAME", "")
    is_file = (
        env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite"
        and bool(dbname)
        and dbname != ":memory:"
        and not dbname.startswith("file:")
    )
    if reading:
        if is_file and not Path(dbname).is_file():
            raise StoreUnreachableError(
                f"no ledger store at {dbname} (SQLITE_DBNAME, else LEDGER_DATA_DIR's "
                "ledger.sqlite): the file does not exist; nothing was checked"
            )
        env["CREATE_TABLE"] = "false"  # missing tables are an error, not made
    elif is_file:
        Path(dbname).parent.mkdir(parents=True, exist_ok=True)
    return Ledger(ReferenceData.load(settings.reference_file), env=env)


def _report(report: VerifyReport, seconds: float) -> int:
    rate = round(report.events / seconds) if seconds > 0 else 0
    values = report.to_log()
    divergence = values.pop("divergence")
    if report.checkpoints_after:
        # The header's range is not signed: the auditor compares it with the range asked
        # for, knowing that the witness has seen history beyond it (docs/hash-chain.md, 8).
        log.warning(
            "audit.verify.checkpoints_after_export",
            start=report.start,
            stop=report.stop,
            positions=list(report.checkpoints_after),
            detail=f"after this export: not checked: the checkpoint(s) at position(s) "
            f"{', '.join(map(str, report.checkpoints_after))} lie beyond the range the "
            f"export's header states ({report.start} to {report.stop}); the header is not "
            "signed, so compare that range with the one asked for",
        )
    if report.divergence is None:
        log.info("audit.verify.clean", seconds=round(seconds, 3), events_per_s=rate, **values)
        return 0
    log.error(
        "audit.verify.divergence",
        seconds=round(seconds, 3),
        **values,
        **{f"divergence_{k}": v for k, v in divergence.items()},
    )
    return 3 if report.divergence.kind == "wrong_key" else 1


def _verify_evidence(settings: LedgerSettings, ledger: Ledger) -> int:
    """Re-read every referenced evidence file; 1 when one is missing or changed."""
    if not settings.relay.nats_url:
        raise ValueError("--deep reads the evidence from NATS: set NATS_URL")
    objects = EvidenceObjects(settings.relay.nats_url, settings.relay.nats, settings.evidence)
    try:
        started = time.perf_counter()
        report = verify_evidence(ledger, objects.read_into)
    finally:
        objects.close()
    for problem in report.problems:
        log.error("audit.verify.evidence_" + problem.problem, **problem.to_log())
    values = {
        "evidence": report.evidence,
        "objects": report.objects,
        "bytes_read": report.bytes_read,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if report.ok:
        log.info("audit.verify.evidence_clean", **values)
        return 0
    log.error("audit.verify.evidence_divergence", problems=len(report.problems), **values)
    return 1


def _sweep_evidence(settings: LedgerSettings, ledger: Ledger, grace_minutes: float) -> int:
    if not settings.relay.nats_url:
        raise ValueError("sweep-evidence works on the evidence in NATS: set NATS_URL")
    objects = EvidenceObjects(settings.relay.nats_url, settings.relay.nats, settings.evidence)
    try:
        swept = sweep_orphans(ledger, objects, timedelta(minutes=grace_minutes), datetime.now(UTC))
    finally:
        objects.close()
    for name in swept:
        log.info("audit.evidence_swept", object=name)
    log.info("audit.sweep_evidence.done", swept=len(swept), grace_minutes=grace_minutes)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "export" and args.stop is not None and args.stop < args.start:
        parser.error(f"--from {args.start} is after --to {args.stop}: the range is empty")
    favour_reading_thread()  # this process reads the history: nothing else waits on it
    try:
        settings = LedgerSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "verify":
            public_key = [key for path in args.public_key for key in load_public_keys(path)]
            witness = read_checkpoints_file(args.checkpoints) if args.checkpoints else None
            started = time.perf_counter()
            if args.deep and args.export is not None:
                raise ValueError("--deep verifies the store's evidence: use it with --store")
            if args.export is not None:
                report = verify_export(args.export, public_key, witness)
            else:
                ledger = _open_ledger(settings, reading=True)
                try:
                    report = verify_store(ledger, public_key, witness)
                    if args.deep:
                        deep = _verify_evidence(settings, ledger)
                        return max(_report(report, time.perf_counter() - started), deep)
                finally:
                    ledger.close()
            return _report(report, time.perf_counter() - started)
        ledger = _open_ledger(settings, reading=args.command == "export")
        try:
            if args.command == "sweep-evidence":
                return _sweep_evidence(settings, ledger, args.grace_minutes)
            if args.command == "export":
                started = time.perf_counter()
                stats = export_jsonl(ledger, args.out, args.start, args.stop)
                seconds = time.perf_counter() - started
                log.info(
                    "audit.exported",
                    file=str(args.out),
                    events=stats.events,
                    first_position=stats.first_position,
                    last_position=stats.last_position,
                    head=stats.head,
                    checkpoints=stats.checkpoints,
                    bytes=stats.bytes,
                    seconds=round(seconds, 3),
                )
                return 0
            audit = AuditSettings.from_env()
            checkpoints = Checkpoints(
                ledger.recorder,
                settings.store_env,
                load_signing_key(audit),
                retired=load_retired_keys(audit),
            )
            try:
                checkpoints.check_taken_over()  # a new key signs once the ledger rotated
                checkpoint = checkpoints.create()
            finally:
                checkpoints.close()
            log.info("audit.checkpoint", **checkpoint.to_json())
            return 0
        finally:
            ledger.close()
    except (ConfigError, ReferenceDataError, ExportFormatError, OSError, ValueError) as exc:
        configure_logging()
        log.error("audit.error", command=args.command, error=str(exc))
        return 2
    except (CheckpointError, ExportError, WorkerError) as exc:
        log.error("audit.failed", command=args.command, error=str(exc))
        return 1
    except Exception as exc:
        # A store that cannot be reached or opened (or is lost during the run): one line,
        # and 2, nothing checked. It was a traceback and exit status 1, which `verify`
        # otherwise means for a history that diverges: an auditor's script read a database
        # that was down as tampering.
        if not logged_start_failure("audit", exc):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())

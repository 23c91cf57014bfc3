"""The state of one ledgerctl run: the root options, the settings resolved from them when a
command needs them, and the clients (created once, closed at the end)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import typer

from incidentledger_client import LedgerClient, NotifierClient, RetryPolicy, i18n
from incidentledger_client.cli import config, output
from incidentledger_client.i18n import _
from incidentledger_client.types import ReferenceData

#: Where the zone came from when no zone is set and the ledger says the regency's
#: (``GetReferenceData``'s ``zone``): ``config view``'s source of the ``zone`` setting.
LEDGER_ZONE = "ledger"


@dataclass
class State:
    """The root options, resolved into settings only when a command needs them (so --help,
    --version, completion and ``config`` work whatever the configuration says)."""

    options: dict[str, Any] = field(default_factory=dict)
    as_json: bool = False
    _resolved: config.Settings | None = None
    _ledger: LedgerClient | None = None
    _notifier: NotifierClient | None = None
    _reference: ReferenceData | None = None
    #: The services this run has called ("ledger", "notifier"): an error names their address.
    used: list[str] = field(default_factory=list)
    #: The request id of the command this run sends (its --request-id, or the one made for
    #: it): an error that leaves the command's fate unknown names it.
    request_id: str | None = None
    #: The reference codes of the incidents this run has looked up, by name: a reply says
    #: the code the officer typed and reads out, which the ledger's answer to a command
    #: other than a report does not carry.
    references: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> config.Settings:
        if self._resolved is None:
            self._resolved = config.resolve(**self.options)
        return self._resolved

    def ledger(self) -> LedgerClient:
        if "ledger" not in self.used:
            self.used.append("ledger")
        if self._ledger is None:
            settings = self.settings
            self._ledger = LedgerClient(
                settings.address,
                settings.token or None,
                tls=settings.tls_ca,
                client_cert=settings.tls_cert,
                client_key=settings.tls_key,
                timeout=settings.timeout,
                retry=self._retry(_("the ledger"), settings.address),
                language=i18n.current(),
            )
        return self._ledger

    def _retry(self, service: str, address: str) -> RetryPolicy:
        """With ``--timeout``, the whole command gives up then (retries included): a person
        asking for 2 s does not wait the client's default 20 s for a server that is down.
        At a terminal, the first retry says so (a command that waits in silence for a
        server that is down looks hung)."""
        timeout = self.settings.timeout
        notify = _retrying_note(service, address) if sys.stderr.isatty() else None
        if timeout:
            return RetryPolicy(budget=timeout, on_retry=notify)
        return RetryPolicy(on_retry=notify)

    def reference(self) -> ReferenceData:
        """The ledger's reference data, fetched once per run (one small call)."""
        if self._reference is None:
            self._reference = self.ledger().reference_data()
        return self._reference

    def zone(self, *, ask_ledger: bool = True) -> ZoneInfo:
        """The zone times are shown and typed in for people: the one set (``--zone``,
        ``LEDGERCTL_ZONE``, the config file), else the regency's as the ledger states it
        (``GetReferenceData``'s ``zone``, from the reference data fetched once per run), else
        the default, WIB (a ledger too old to say it). ``ask_ledger=False`` (a command of the
        notifier's, an error's hint) makes no call for it: the ledger's zone only when this
        run has its reference data already."""
        return self.zone_source(ask_ledger=ask_ledger)[0]

    def zone_source(self, *, ask_ledger: bool = True) -> tuple[ZoneInfo, str]:
        """:meth:`zone` and where it came from: the setting's source when one is set
        (``flag --zone``, ``env LEDGERCTL_ZONE``, ``config <file>``), :data:`LEDGER_ZONE`
        when it is the ledger's, else ``default``."""
        settings = self.settings
        source = settings.source("zone")
        if source != "default":
            return settings.tz(), source
        if self._reference is None and not ask_ledger:
            return settings.tz(), source
        ledgers = self.reference().tz()
        return (ledgers, LEDGER_ZONE) if ledgers is not None else (settings.tz(), source)

    def notifier(self) -> NotifierClient:
        if "notifier" not in self.used:
            self.used.append("notifier")
        if self._notifier is None:
            settings = self.settings
            self._notifier = NotifierClient(
                settings.notifier_address,
                settings.token or None,
                tls=settings.tls_ca,
                client_cert=settings.tls_cert,
                client_key=settings.tls_key,
                timeout=settings.timeout,
                retry=self._retry(_("the notifier"), settings.notifier_address),
                language=i18n.current(),
            )
        return self._notifier

    def close(self) -> None:
        for client in (self._ledger, self._notifier):
            if client is not None:
                client.close()


def state(ctx: typer.Context) -> State:
    value = ctx.find_root().obj
    if not isinstance(value, State):
        raise RuntimeError("ledgerctl: no state (the root callback did not run)")
    return value


def _retrying_note(service: str, address: str) -> Callable[[int, float], None]:
    def note(attempt: int, left: float) -> None:
        if attempt == 0:
            output.error_console().print(
                _(
                    "{service} at {address} does not answer; trying again for up to {seconds} s "
                    "(Ctrl-C stops)"
                ).format(service=service, address=address, seconds=round(left)),
                highlight=False,
            )

    return note

"""Webhook registration: who may create, change and delete a webhook, and what it may hold.

- A webhook belongs to the agency that created it. That agency, or the coordinator, may
  change or delete it (``NOT_OWNER`` otherwise); its name, owner and creation time never
  change.
- Its URL passes the target checks (:mod:`services.notifier.targets`) whenever it is set,
  at creation as at a change.
- Its secret is 16-256 characters, stored sealed (:mod:`services.notifier.sealing`) and
  never returned.
- The filter's ``involving_my_agency`` stands for the owner's agency, whoever sets it.
- An agency has at most :data:`MAX_WEBHOOKS_PER_AGENCY` webhooks (``TOO_MANY_WEBHOOKS``):
  every event is delivered to every webhook whose filter takes it, by the same workers for
  every agency, so one agency's thousands of webhooks would delay every other agency's
  deliveries, and POST each event thousands of times to wherever they point.

Every change is told to the delivery engine (``changed``), which reads the webhooks again
before it takes in the next events: a changed filter applies to the events taken in after
the change. A delivery reads its webhook when it is attempted, so the deliveries not yet
made go to the new URL, signed with the new secret.

The servicer translates requests into these calls and their results back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from incidentledger.v1 import notifier_service_pb2 as napi
from services.common.auth import Principal
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from services.common.reference import ReferenceData, Role
from services.notifier.filters import EventFilter
from services.notifier.store import DeletedWebhookReplayedError, NotifierStore, WebhookRow
from services.notifier.targets import TargetPolicy

SECRET_LENGTH = (16, 256)
#: The most webhooks an agency has at once (deleted ones do not count): enough for one per
#: system of the agency and kecamatan, and a few more.
MAX_WEBHOOKS_PER_AGENCY = 50


@dataclass(frozen=True)
class WebhookChange:
    """What an update sets; ``None`` leaves a field as it is."""

    url: str | None = None
    secret: str | None = None
    filter: napi.EventFilter | None = None


class WebhookRegistry:
    def __init__(
        self,
        store: NotifierStore,
        reference: ReferenceData,
        targets: TargetPolicy,
        changed: Callable[[], None],
    ) -> None:
        self._store = store
        self._reference = reference
        self._targets = targets
        self._changed = changed

    def create(
        self,
        principal: Principal,
        request_id: str,
        url: str,
        secret: str,
        event_filter: napi.EventFilter,
    ) -> WebhookRow:
        """A new webhook of the caller's agency, or the one the same request created."""
        url = self._targets.check_registration(url).url
        _check_secret(secret, "secret")
        filter_json = self._filter_json(event_filter, principal.agency, "filter")
        fingerprint = hashlib.sha256(f"{url}\n{filter_json}\n{secret}".encode()).hexdigest()
        try:
            row = self._store.add_webhook(
                agency=principal.agency,
                url=url,
                secret=secret,
                filter_json=filter_json,
                request_key=f"{principal.agency}\n{request_id}",
                fingerprint=fingerprint,
                max_per_agency=MAX_WEBHOOKS_PER_AGENCY,
            )
        except DeletedWebhookReplayedError as deleted:
            raise NotFound(
                f"request_id {request_id!r} created webhooks/{deleted.webhook_id}, which was "
                "deleted since: send a new request_id to create another",
                reason="WEBHOOK_NOT_FOUND",
                metadata={"webhook": f"webhooks/{deleted.webhook_id}", "field": "request_id"},
            ) from None
        if row.fingerprint != fingerprint:
            raise AlreadyExists(
                f"request_id {request_id!r} already created a different webhook",
                reason="REQUEST_ID_REUSED",
                metadata={"webhook": f"webhooks/{row.id}"},
            )
        self._changed()
        return row

    def update(self, principal: Principal, webhook_id: str, change: WebhookChange) -> WebhookRow:
        """The webhook with ``change`` made (the fields named ``webhook.*``, as in the
        request); refused as a delete would be when it does not exist or is not the
        caller's to change."""
        row = self._owned(principal, webhook_id, "webhook.name")
        url = None
        if change.url is not None:
            url = self._targets.check_registration(change.url, "webhook.url").url
        if change.secret is not None:
            _check_secret(change.secret, "webhook.secret")
        filter_json = None
        if change.filter is not None:
            filter_json = self._filter_json(change.filter, row.agency, "webhook.filter")
        updated = self._store.update_webhook(
            webhook_id, url=url, secret=change.secret, filter_json=filter_json
        )
        if updated is None:  # deleted meanwhile
            raise _not_found(webhook_id, "webhook.name")
        self._changed()
        return updated

    def delete(self, principal: Principal, webhook_id: str) -> None:
        """Delete a webhook: its secret is erased and its waiting deliveries cancelled."""
        self._owned(principal, webhook_id, "name")
        self._store.delete_webhook(webhook_id)
        self._changed()

    def require_owner(self, principal: Principal, agency: str) -> None:
        """The caller is of ``agency``, or the coordinator."""
        role = self._reference.agencies[principal.agency].role
        if principal.agency != agency and role is not Role.COORDINATOR:
            raise PermissionDenied(
                f"this belongs to {agency}",
                reason="NOT_OWNER",
                metadata={"owner": agency, "caller_agency": principal.agency},
            )

    def _owned(self, principal: Principal, webhook_id: str, field: str) -> WebhookRow:
        """The webhook, when the caller may act on it; ``field`` names the request's field
        that named it (in a NOT_FOUND)."""
        row = self._store.webhook(webhook_id)
        if row is None:
            raise _not_found(webhook_id, field)
        self.require_owner(principal, row.agency)
        return row

    def _filter_json(self, message: napi.EventFilter, owner: str, field: str) -> str:
        return EventFilter.from_proto(message, self._reference, owner, field).to_json()


def _check_secret(secret: str, field: str) -> None:
    low, high = SECRET_LENGTH
    if not low <= len(secret) <= high:
        raise InvalidArgument(field, f"must be {low} to {high} characters")


def _not_found(webhook_id: str, field: str) -> NotFound:
    """As the ledger's INCIDENT_NOT_FOUND: the name asked for and the field that named it."""
    return NotFound(
        f"webhooks/{webhook_id} does not exist",
        reason="WEBHOOK_NOT_FOUND",
        metadata={"webhook": f"webhooks/{webhook_id}", "field": field},
    )

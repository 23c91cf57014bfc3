"""UpdateWebhook against the real stack (ledger -> relay -> nats-server -> notifier -> HTTP):
the webhook keeps its name, later deliveries follow the change, only the masked fields
change, and every refusal is the one its create or delete counterpart gives."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.examples.webhook_receiver import verify
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from services.common.config import WebhookSettings
from services.common.grpc_errors import error_info
from services.common.natsserver import NatsServer
from services.notifier.sealing import SEALED_PREFIX
from services.notifier.webhooks import MAX_WEBHOOKS_PER_AGENCY
from tests.fanout_support import (
    WEBHOOK_SECRET,
    Received,
    Stack,
    WebhookReceiver,
    running_stack,
    wait_until,
    webhook_receiver,
)
from tests.support import store_environment

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

OTHER_SECRET = "another-shared-secret-0123"


@pytest.fixture
def stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    quick = WebhookSettings(
        max_attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.1, timeout_seconds=1.0
    )
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url, webhooks=quick) as running,
    ):
        yield running


def create(stack: Stack, url: str, agency: str = "polres") -> napi.Webhook:
    return stack.stub.CreateWebhook(
        napi.CreateWebhookRequest(request_id=secrets.token_hex(8), url=url, secret=WEBHOOK_SECRET),
        metadata=stack.ledger.md(agency),
    ).webhook


def update(
    stack: Stack, webhook: napi.Webhook, paths: list[str] | None, agency: str = "polres"
) -> napi.Webhook:
    request = napi.UpdateWebhookRequest(webhook=webhook)
    if paths is not None:
        request.update_mask.CopyFrom(FieldMask(paths=paths))
    return stack.stub.UpdateWebhook(request, metadata=stack.ledger.md(agency)).webhook


def listed(stack: Stack, agency: str = "polres") -> list[napi.Webhook]:
    request = napi.ListWebhooksRequest()
    return list(stack.stub.ListWebhooks(request, metadata=stack.ledger.md(agency)).webhooks)


def signed_with(item: Received, secret: str) -> bool:
    return verify(secret, item.headers["X-Ledger-Signature"], item.body, now=item.at)


def arrived(receiver: WebhookReceiver) -> list[Received]:
    """What reached the receiver, each delivery once (whatever secret signed it)."""
    with receiver._lock:
        items = list(receiver.received)
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.delivery_id not in seen:
            seen.add(item.delivery_id)
            unique.append(item)
    return unique


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def reason(error: grpc.RpcError) -> str:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    return str(info.reason)


def test_an_update_keeps_the_name_and_later_deliveries_follow_the_masked_change(
    stack: Stack,
) -> None:
    with webhook_receiver() as first, webhook_receiver() as second:
        hook = create(stack, first.url)
        stack.ledger.report("polres")
        wait_until(lambda: len(first.verified()) == 1, what="the delivery before the update")

        # Only the URL is masked: the secret and the filter sent along are ignored.
        changed = update(
            stack,
            napi.Webhook(
                name=hook.name,
                url=second.url,
                secret=OTHER_SECRET,
                filter=napi.EventFilter(kecamatan=["ipuh"]),
            ),
            ["url"],
        )
        assert (changed.name, changed.agency, changed.url) == (hook.name, "polres", second.url)
        assert changed.create_time == hook.create_time
        assert changed.filter == hook.filter
        assert not changed.secret, "a secret is never returned"
        assert listed(stack) == [changed]

        after_url = stack.ledger.report("polres")  # in kota_mukomuko, not ipuh
        wait_until(lambda: len(second.verified()) == 1, what="a delivery to the new URL")
        (delivered,) = second.verified()
        assert delivered.json["event"]["event_id"] == after_url.event_id
        assert delivered.json["webhook"] == hook.name
        assert len(arrived(first)) == 1, "nothing more went to the old URL"

        # Only the secret: deliveries are signed with the new one; the URL stays.
        changed = update(
            stack, napi.Webhook(name=hook.name, url=first.url, secret=OTHER_SECRET), ["secret"]
        )
        assert changed.url == second.url
        stack.ledger.report("polres")
        wait_until(lambda: len(arrived(second)) >= 2, what="a delivery with the new secret")
        assert len(arrived(second)) == 2
        newest = arrived(second)[-1]
        assert signed_with(newest, OTHER_SECRET)
        assert not signed_with(newest, WEBHOOK_SECRET)

        # Only the filter (replaced whole): the incident's report (medium) no longer matches,
        # its assessment to critical does. Deliveries of one incident keep their order, so
        # the report would have come first.
        changed = update(
            stack,
            napi.Webhook(name=hook.name, filter=napi.EventFilter(min_severity="high")),
            ["filter"],
        )
        assert (changed.url, changed.filter.min_severity) == (second.url, "high")
        reported = stack.ledger.report("polres")
        assessed = stack.ledger.stub.AssessSeverity(
            api.AssessSeverityRequest(
                request_id=secrets.token_hex(8), name=reported.incident, severity="critical"
            ),
            metadata=stack.ledger.md("polres"),
        ).result
        wait_until(
            lambda: assessed.event_id in [r.json["event"]["event_id"] for r in arrived(second)],
            what="the assessment's delivery",
        )
        types = [r.json["event"]["type"] for r in arrived(second)]
        assert types[2:] == ["SeverityAssessed"], "the report no longer matched"
        assert [h.name for h in listed(stack)] == [hook.name]


def test_an_update_without_a_mask_changes_what_the_webhook_sets(
    stack: Stack, tmp_path: Path
) -> None:
    with webhook_receiver() as first, webhook_receiver() as second:
        hook = create(stack, first.url)
        changed = update(
            stack, napi.Webhook(name=hook.name, url=second.url, secret=OTHER_SECRET), None
        )
        assert (changed.url, changed.filter) == (second.url, hook.filter)
        changed = update(
            stack, napi.Webhook(name=hook.name, filter=napi.EventFilter(categories=["flood"])), []
        )
        assert (changed.url, list(changed.filter.categories)) == (second.url, ["flood"])
        # The new secret is stored sealed, as at creation.
        database = tmp_path / "data" / "notifier.sqlite"
        with closing(sqlite3.connect(database)) as lite:
            (stored,) = lite.execute("SELECT secret FROM webhooks").fetchone()
        assert stored.startswith(SEALED_PREFIX)
        assert OTHER_SECRET not in stored and WEBHOOK_SECRET not in stored


def test_a_coordinator_may_update_another_agency_s_webhook_and_involving_means_the_owner(
    stack: Stack,
) -> None:
    hook = create(stack, "http://127.0.0.1:9/hook", agency="dinkes")
    changed = update(
        stack,
        napi.Webhook(name=hook.name, filter=napi.EventFilter(involving_my_agency=True)),
        ["filter"],
        agency="desk_pilkada",
    )
    assert changed.agency == "dinkes"
    assert list(changed.filter.agencies) == ["dinkes"]


def test_refused_updates_answer_as_create_and_delete_do_and_change_nothing(
    stack: Stack,
) -> None:
    hook = create(stack, "http://127.0.0.1:9/hook")
    polres = stack.ledger.md("polres")

    def attempt(
        webhook: napi.Webhook, paths: list[str] | None, agency: str = "polres"
    ) -> grpc.RpcError:
        return refused(lambda: update(stack, webhook, paths, agency))

    def invalid(webhook: napi.Webhook, paths: list[str] | None, field: str) -> str:
        error = attempt(webhook, paths)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert violations(error) == [field], error.details()
        return reason(error)

    same = napi.Webhook(name=hook.name, url="http://127.0.0.1:9/other")
    assert invalid(same, ["url", "colour"], "update_mask.paths[1]") == "INVALID_FIELD"
    assert invalid(same, ["filter.kecamatan"], "update_mask.paths[0]") == "INVALID_FIELD"
    for fixed in ("name", "agency", "create_time"):
        assert invalid(same, [fixed], "update_mask.paths[0]") == "FIELD_IMMUTABLE"
    invalid(napi.Webhook(name=hook.name), None, "update_mask")  # nothing to change
    invalid(napi.Webhook(name="hooks/x", url="http://127.0.0.1:9/h"), ["url"], "webhook.name")
    # The URL goes through the checks a new webhook's does (the SSRF allow-list included:
    # these tests allow loopback only).
    for url in ("ftp://x/y", "", "http://user:pw@127.0.0.1:9/h", "http://169.254.169.254/"):
        invalid(napi.Webhook(name=hook.name, url=url), ["url"], "webhook.url")
    invalid(napi.Webhook(name=hook.name, secret="short"), ["secret"], "webhook.secret")
    invalid(napi.Webhook(name=hook.name), ["secret"], "webhook.secret")
    invalid(
        napi.Webhook(name=hook.name, filter=napi.EventFilter(kecamatan=["atlantis"])),
        ["filter"],
        "webhook.filter.kecamatan[0]",
    )

    # NOT_FOUND and NOT_OWNER exactly as DeleteWebhook answers them.
    for name, agency, code, why in (
        ("webhooks/wh_nothing", "polres", grpc.StatusCode.NOT_FOUND, "WEBHOOK_NOT_FOUND"),
        (hook.name, "dinkes", grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER"),
    ):
        updating = attempt(napi.Webhook(name=name, url="http://127.0.0.1:9/h"), ["url"], agency)
        deleting = refused(
            partial(
                stack.stub.DeleteWebhook,
                napi.DeleteWebhookRequest(name=name),
                metadata=stack.ledger.md(agency),
            )
        )
        for error in (updating, deleting):
            assert (error.code(), reason(error)) == (code, why)
        assert updating.details() == deleting.details()
    assert listed(stack) == [hook], "nothing changed"

    stack.stub.DeleteWebhook(napi.DeleteWebhookRequest(name=hook.name), metadata=polres)
    gone = attempt(napi.Webhook(name=hook.name, url="http://127.0.0.1:9/h"), ["url"])
    assert (gone.code(), reason(gone)) == (grpc.StatusCode.NOT_FOUND, "WEBHOOK_NOT_FOUND")
    unauthenticated = refused(
        lambda: stack.stub.UpdateWebhook(
            napi.UpdateWebhookRequest(webhook=napi.Webhook(name=hook.name, url="http://x/"))
        )
    )
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED


def test_not_found_names_what_was_asked_for_and_the_field_that_named_it(stack: Stack) -> None:
    """As the ledger's INCIDENT_NOT_FOUND: WEBHOOK_NOT_FOUND and DEAD_LETTER_NOT_FOUND say
    which name was not found and in which field of the request, not a bare reason."""
    polres = stack.ledger.md("polres")
    missing = "webhooks/wh_nothing"
    calls: dict[str, Callable[[], object]] = {
        "webhook.name": lambda: stack.stub.UpdateWebhook(
            napi.UpdateWebhookRequest(
                webhook=napi.Webhook(name=missing, url="http://127.0.0.1:9/h"),
                update_mask=FieldMask(paths=["url"]),
            ),
            metadata=polres,
        ),
        "name": lambda: stack.stub.DeleteWebhook(
            napi.DeleteWebhookRequest(name=missing), metadata=polres
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(caught.value)  # type: ignore[arg-type]
        assert info is not None and info.reason == "WEBHOOK_NOT_FOUND"
        assert dict(info.metadata) == {"webhook": missing, "field": field}
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.ReplayDeadLetter(
            napi.ReplayDeadLetterRequest(name="deadLetters/nothing"), metadata=polres
        )
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "DEAD_LETTER_NOT_FOUND"
    assert dict(info.metadata) == {"dead_letter": "deadLetters/nothing", "field": "name"}


def test_an_auditor_registers_webhooks_of_its_own_and_changes_no_other(stack: Stack) -> None:
    """Receiving events is reading, which auditors may do (docs/security.md, "Roles"): an
    auditor's webhook is its own, like any agency's; another agency's is NOT_OWNER to it."""
    polres_hook = create(stack, "http://127.0.0.1:9/polres")
    audit_hook = create(stack, "http://127.0.0.1:9/audit", agency="inspektorat")
    assert audit_hook.agency == "inspektorat"
    seen = {hook.name for hook in listed(stack, "inspektorat")}
    assert seen == {polres_hook.name, audit_hook.name}  # auditors see all, as ListDeliveries
    auditor = stack.ledger.md("inspektorat")
    for call in (
        partial(
            stack.stub.DeleteWebhook,
            napi.DeleteWebhookRequest(name=polres_hook.name),
            metadata=auditor,
        ),
        partial(
            stack.stub.UpdateWebhook,
            napi.UpdateWebhookRequest(
                webhook=napi.Webhook(name=polres_hook.name, url="http://127.0.0.1:9/x"),
                update_mask=FieldMask(paths=["url"]),
            ),
            metadata=auditor,
        ),
    ):
        error = refused(call)
        assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    stack.stub.DeleteWebhook(napi.DeleteWebhookRequest(name=audit_hook.name), metadata=auditor)
    assert listed(stack) == [polres_hook]


def test_an_agency_has_so_many_webhooks_and_a_deleted_one_frees_its_place(stack: Stack) -> None:
    """Every event is POSTed to every webhook whose filter takes it, by workers all agencies
    share. Before, an agency could register webhooks without end (thousands, all at one
    address), each event then sent thousands of times and every other agency's deliveries
    waiting behind them. Now the 51st is refused; a retry of a request that created one is
    still answered, and a deleted webhook frees its place."""
    url = "http://127.0.0.1:9/hook"
    first = napi.CreateWebhookRequest(request_id="hook-0", url=url, secret=WEBHOOK_SECRET)
    made = [stack.stub.CreateWebhook(first, metadata=stack.ledger.md("polres")).webhook]
    # Each at an address of its own: a second of the same URL and filter is WEBHOOK_EXISTS.
    made += [create(stack, f"{url}/{n}") for n in range(1, MAX_WEBHOOKS_PER_AGENCY)]
    with pytest.raises(grpc.RpcError) as refused:
        create(stack, f"{url}/more")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refused.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "TOO_MANY_WEBHOOKS"
    assert dict(info.metadata) == {"agency": "polres", "limit": str(MAX_WEBHOOKS_PER_AGENCY)}
    again = stack.stub.CreateWebhook(first, metadata=stack.ledger.md("polres")).webhook
    assert again.name == made[0].name, "a retry is answered as before"
    assert create(stack, url, agency="bpbd").name, "another agency's are its own"
    stack.stub.DeleteWebhook(
        napi.DeleteWebhookRequest(name=made[-1].name), metadata=stack.ledger.md("polres")
    )
    assert create(stack, f"{url}/more").name not in {w.name for w in made}


def test_a_create_sent_again_after_its_webhook_was_deleted_says_so(stack: Stack) -> None:
    """The same request again after its webhook was deleted answered that deleted webhook as
    created, and nothing was ever delivered: an "ensure it exists" script with a fixed
    request_id ended up with none. Now NOT_FOUND names the webhook and the request_id."""
    polres = stack.ledger.md("polres")
    request = napi.CreateWebhookRequest(
        request_id="polres-hook-1", url="http://127.0.0.1:9/hook", secret="s" * 20
    )
    hook = stack.stub.CreateWebhook(request, metadata=polres).webhook
    assert stack.stub.CreateWebhook(request, metadata=polres).webhook == hook  # a retry
    stack.stub.DeleteWebhook(napi.DeleteWebhookRequest(name=hook.name), metadata=polres)
    with pytest.raises(grpc.RpcError) as replayed:
        stack.stub.CreateWebhook(request, metadata=polres)
    assert replayed.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(replayed.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "WEBHOOK_NOT_FOUND"
    assert (info.metadata["webhook"], info.metadata["field"]) == (hook.name, "request_id")
    assert listed(stack) == []
    fresh = stack.stub.CreateWebhook(
        napi.CreateWebhookRequest(
            request_id="polres-hook-2", url="http://127.0.0.1:9/hook", secret="s" * 20
        ),
        metadata=polres,
    ).webhook
    assert listed(stack) == [fresh]

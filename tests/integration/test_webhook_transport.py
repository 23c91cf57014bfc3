"""How a webhook delivery travels: a redirect is an answer, never followed (its target was
never checked), and an ``https://`` target's certificate is verified against the webhook's
host name, by the CAs the notifier is given, although the request goes to the address the
name was checked to resolve to."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.natsserver import NatsServer
from tests.fanout_support import WebhookReceiver, wait_until, webhook_receiver
from tests.integration.test_webhook_delivery import QUICK, create_webhook, dead_letters, stack_with
from tests.tls_support import CertificateAuthority, Issued

pytestmark = pytest.mark.nats


def test_a_redirect_is_the_answer_and_its_target_is_never_contacted(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with (
        stack_with(tmp_path, nats_server, webhooks=QUICK) as stack,
        webhook_receiver() as elsewhere,
        webhook_receiver() as redirecting,
    ):
        redirecting.status = 307
        redirecting.location = elsewhere.url
        create_webhook(stack, redirecting.url)
        stack.ledger.report("polres")
        wait_until(lambda: len(dead_letters(stack)) == 1, what="a dead letter")
        errors = [d.last_error for d in dead_letters(stack)]
    assert errors == ["HTTP 307"]
    assert elsewhere.received == [], "the redirect's target was contacted"


def serving(issued: Issued) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    return context


def test_https_deliveries_verify_the_certificate_against_the_webhook_name(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    webhooks = replace(QUICK, ca_file=ca.ca_file)
    # For the name only: a check against the address it is sent to would fail.
    named = WebhookReceiver(tls=serving(ca.server("hook", addresses=False)))
    misnamed = WebhookReceiver(tls=serving(ca.server("other", name="elsewhere.test")))
    with stack_with(tmp_path, nats_server, webhooks=webhooks) as stack:
        named.start()
        misnamed.start()
        try:
            create_webhook(stack, named.url)
            refused = create_webhook(stack, misnamed.url)
            stack.ledger.report("polres")
            wait_until(lambda: len(named.verified()) == 1, what="the delivery over TLS")
            wait_until(lambda: len(dead_letters(stack)) == 1, what="a dead letter")
            letters = dead_letters(stack)
        finally:
            named.stop()
            misnamed.stop()
    # The request went to 127.0.0.1, its certificate was checked for "localhost".
    assert named.verified()[0].headers["Host"] == f"localhost:{named.port}"
    # Said as what it is: a refused port reads "connection failed", and an operator could
    # not tell a CA or a name to fix from a firewall.
    assert [(d.webhook, d.last_error) for d in letters] == [
        (refused, "TLS: the receiver's certificate does not verify (its CA, or its name)")
    ]
    assert misnamed.received == []

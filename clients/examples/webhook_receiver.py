"""A webhook receiver that checks the notifier's signatures (Python standard library only).

Run it, then register its URL with the notifier (CreateWebhook) using the same secret::

    python clients/examples/webhook_receiver.py --port 8090 --secret "$WEBHOOK_SECRET"
    ledgerctl -a bpbd webhooks register http://127.0.0.1:8090/hook --secret "$WEBHOOK_SECRET"

A receiver on the notifier's own machine is a loopback address, which the notifier refuses
unless it was started with ``NOTIFIER_WEBHOOK_ALLOW_NETWORKS=127.0.0.0/8`` (for example
``NOTIFIER_WEBHOOK_ALLOW_NETWORKS=127.0.0.0/8 make run``; docs/fan-out.md).

Each POST carries these headers:

- ``X-Ledger-Signature: t=<unix seconds>,v1=<hex>``: ``hex`` is HMAC-SHA256 with the
  webhook's secret over ``"<t>." + body`` (the raw body bytes, exactly as received);
- ``X-Ledger-Delivery``: the delivery id. A delivery may arrive more than once (a
  retry after a timeout, or after the notifier restarted): keep the ids you have
  processed and ignore repeats;
- ``X-Ledger-Event-Id`` and ``X-Ledger-Timestamp``.

Answer with any 2xx status once the event is safely yours; anything else (or no
answer within the notifier's timeout) means "try again later".
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300
# Not 8080: that is where `make run` serves the situation room.
DEFAULT_PORT = 8090


def verify(
    secret: str,
    signature_header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """True if the signature is the secret's over this body and recent enough."""
    try:
        parts = dict(item.split("=", 1) for item in signature_header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False  # too old (or from the future): a replayed request
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, given)


def make_handler(secret: str) -> type[BaseHTTPRequestHandler]:
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not verify(secret, self.headers.get("X-Ledger-Signature", ""), body):
                self.send_response(401)
                self.end_headers()
                return
            delivery = self.headers.get("X-Ledger-Delivery", "")
            with lock:
                repeat = delivery in seen
                seen.add(delivery)
            if not repeat:
                event = json.loads(body)["event"]
                logging.info(
                    "%s %s v%s by %s",
                    event["incident"],
                    event["type"],
                    event["version"],
                    event["actor"]["agency"],
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None  # the example logs events, not requests

    return Handler


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--secret", required=True)
    return parser


def main() -> None:
    args = arguments().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.secret))
    logging.info("listening on http://127.0.0.1:%d/", args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()

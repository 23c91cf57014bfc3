"""structlog setup: JSON lines when not on a terminal, console renderer on one.

Call :func:`configure_logging` once at process start. Request context is bound
with ``structlog.contextvars`` (by the gRPC interceptor) and merged first. The
standard-library loggers of grpc, nats and eventsourcing go through the same
processors.

Text a caller sends is logged only through :func:`clipped`: a request of 1 MB must
not become 1 MB of log.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

import structlog


def clipped(text: str, limit: int) -> str:
    """``text`` when at most ``limit`` characters, else its first ``limit`` characters
    followed by a marker with its length and a SHA-256 prefix (to tell values apart)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{text[:limit]}\u2026[{len(text)} chars, sha256 {digest}]"


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger. ``fmt``: auto, json or console."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            # Drop below-level events before any other work is done for them.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if use_console else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("grpc", "nats", "eventsourcing", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

"""``python -m bench.echo --listen HOST:PORT``: the gRPC echo, the ceiling of a unary command.

A trivial unary method (``/bench.Echo/Echo`` answers the bytes it got) on the ledger's
server stack: grpcio's synchronous server with a thread pool of ``LEDGER_MAX_WORKERS``
threads, the same channel options and the same cap on concurrent calls
(``services.common.serving``), in a process of its own as the ledger runs in. No
interceptor and no servicer: what is left is the transport, the thread hand-off and the
protobuf-free framing, which every ledger command pays too. Stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent import futures

import grpc

from services.common.serving import server_options

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


def _echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
    return request


def serve(listen: str, max_workers: int, max_message_bytes: int) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=server_options(max_message_bytes),
        maximum_concurrent_rpcs=max_workers * 8,
    )
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    if not server.add_insecure_port(listen):
        raise SystemExit(f"cannot listen on {listen}")
    server.start()
    server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--max-workers", type=int, required=True)
    parser.add_argument("--max-message-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.listen, args.max_workers, args.max_message_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

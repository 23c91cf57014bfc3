"""The request interceptor's table of wrapped handlers."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.auth import TokenStore
from services.common.grpc_server import RequestInterceptor


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _handler(request: Any, context: grpc.ServicerContext) -> Any:
    return request


def test_unknown_methods_are_not_kept_and_known_ones_are_wrapped_once() -> None:
    interceptor = RequestInterceptor(TokenStore({}, development=True), "test.example")
    for n in range(100):
        found = interceptor.intercept_service(lambda _: None, _Details(f"/x.Y/Random{n}"))
        assert found is None
    known = grpc.unary_unary_rpc_method_handler(_handler)
    first = interceptor.intercept_service(lambda _: known, _Details("/x.Y/Known"))
    again = interceptor.intercept_service(lambda _: known, _Details("/x.Y/Known"))
    assert first is not None and first is again
    assert list(interceptor._wrapped) == ["/x.Y/Known"]

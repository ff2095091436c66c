"""Assertions on gRPC errors and their google.rpc details."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class RpcFailure:
    def __init__(self, error: grpc.RpcError) -> None:
        self.error = error
        self.code = error.code()
        self.details = error.details()
        self.reason = ""
        self.domain = ""
        self.metadata: dict[str, str] = {}
        self.violations: dict[str, str] = {}
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    self.reason, self.domain, self.metadata = info.reason, info.domain, dict(info.metadata)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    self.violations = {v.field: v.description for v in bad.field_violations}
        self.trailers = dict(error.trailing_metadata() or ())


def rpc_error(code: grpc.StatusCode, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RpcFailure:
    """Calls fn, asserts it fails with `code`, and returns the decoded failure."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    failure = RpcFailure(info.value)  # type: ignore[arg-type]
    assert failure.code == code, f"expected {code}, got {failure.code}: {failure.details}"
    assert failure.domain == "coordd.dev", "every coordd error carries one ErrorInfo"
    assert "x-request-id" in failure.trailers
    return failure

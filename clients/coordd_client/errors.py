"""gRPC errors from coordd decoded into Python exceptions with their google.rpc details.

Each exception is still a grpc.RpcError (code(), details()), so existing handlers keep working.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class CoorddError(grpc.RpcError, Exception):
    """Base class: `.status_code`, `.message`, `.reason` (ErrorInfo), `.metadata`,
    `.violations` ({field: description}), `.request_id`."""

    status_code = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        status_code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: dict[str, str] | None = None,
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = dict(violations or {})
        self.request_id = request_id

    def code(self) -> grpc.StatusCode:
        return self.status_code

    def details(self) -> str:
        return self.message

    def __str__(self) -> str:
        extra = f" [{self.reason}]" if self.reason else ""
        return f"{self.status_code.name}: {self.message}{extra}"


class InvalidArgument(CoorddError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CoorddError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CoorddError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CoorddError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(CoorddError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CoorddError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(CoorddError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(CoorddError):
    status_code = grpc.StatusCode.ABORTED


class Unavailable(CoorddError):
    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CoorddError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(CoorddError):
    status_code = grpc.StatusCode.CANCELLED


class Internal(CoorddError):
    status_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[CoorddError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Aborted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def from_rpc_error(error: Any) -> CoorddError:
    """Decodes a grpc.RpcError (sync or aio) into the matching CoorddError subclass."""
    if isinstance(error, CoorddError):
        return error
    code = error.code()
    reason, metadata, violations = "", {}, {}
    trailers = tuple(error.trailing_metadata() or ())
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = {v.field: v.description for v in bad.field_violations}
    request_id = next((v for k, v in trailers if k == "x-request-id"), "")
    cls = _BY_CODE.get(code, CoorddError)
    return cls(
        error.details() or "",
        status_code=code,
        reason=reason,
        metadata=metadata,
        violations=violations,
        request_id=request_id if isinstance(request_id, str) else "",
    )

"""Domain errors -> canonical gRPC status with google.rpc details (one ErrorInfo, AIP-193)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from coordd.core.errors import DomainError

ERROR_DOMAIN = "coordd.dev"

_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "ABORTED": grpc.StatusCode.ABORTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
    retry_after_s: float | None = None,
) -> grpc.Status:
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    proto.details.append(
        _pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {}))
    )
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        proto.details.append(_pack(bad))
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(int(retry_after_s * 1e9), 0))
        proto.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(proto)


def status_for(error: DomainError) -> grpc.Status:
    return build_status(
        _CODES.get(error.code, grpc.StatusCode.INTERNAL),
        error.message,
        error.reason,
        error.metadata,
        [(v.field, v.description) for v in error.violations],
        getattr(error, "retry_after_s", None),
    )

"""Domain errors -> canonical gRPC status with google.rpc details (one ErrorInfo, AIP-193).

What a status echoes is capped: a message at 512 characters, a violation's field at 256 and
its description at 512, ErrorInfo metadata values at 512 (each cut with an ellipsis, and to at
most twice as many UTF-8 bytes), and the whole encoded google.rpc.Status at 3 KB (violations
beyond it are dropped, the last one saying how many). An 8 KB name echoed into an error then
still fits the client's metadata limit (8 KB by default) instead of failing the call.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from coordd.core.errors import DomainError

ERROR_DOMAIN = "coordd.dev"
MAX_MESSAGE_CHARS = 512
MAX_FIELD_CHARS = 256
MAX_DESCRIPTION_CHARS = 512
MAX_STATUS_BYTES = 3072
ELLIPSIS = "…"

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


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters (and 2 x `limit` UTF-8 bytes), ending in an ellipsis."""
    if len(text) <= limit and len(text) * 4 <= 2 * limit:
        return text  # fast path: short enough even if every character took 4 bytes
    cut = text if len(text) <= limit else text[: limit - 1] + ELLIPSIS
    while len(cut.encode()) > 2 * limit:
        cut = cut[: max(len(cut) * 3 // 4, 1) - 1] + ELLIPSIS
    return cut


def _status_proto(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    violations: list[tuple[str, str]],
    retry_after_s: float | None = None,
) -> status_pb2.Status:
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    proto.details.append(
        _pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    )
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        proto.details.append(_pack(bad))
    if retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(1, round(retry_after_s * 1e9)))
        proto.details.append(_pack(retry))
    return proto


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
    retry_after_s: float | None = None,
) -> grpc.Status:
    message = clip(message)
    metadata = {clip(k, MAX_FIELD_CHARS): clip(v, MAX_DESCRIPTION_CHARS) for k, v in (metadata or {}).items()}
    listed = [(clip(f, MAX_FIELD_CHARS), clip(d, MAX_DESCRIPTION_CHARS)) for f, d in violations or ()]
    proto = _status_proto(code, message, reason, metadata, listed, retry_after_s)
    total = len(listed)
    while proto.ByteSize() > MAX_STATUS_BYTES and listed:
        listed = listed[: len(listed) // 2] if len(listed) > 8 else listed[:-1]
        note = [("…", f"{total - len(listed)} more violations not listed")]
        proto = _status_proto(code, message, reason, metadata, listed + note, retry_after_s)
    return rpc_status.to_status(proto)


def status_for(error: DomainError) -> grpc.Status:
    return build_status(
        _CODES.get(error.code, grpc.StatusCode.INTERNAL),
        error.message,
        error.reason,
        error.metadata,
        [(v.field, v.description) for v in error.violations],
        # RESOURCE_EXHAUSTED from a rate limit or login throttle says when to retry.
        getattr(error, "retry_after_s", None),
    )

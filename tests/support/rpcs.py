"""Every coordd RPC, read from the generated descriptors, and a generic way to call it.

Tests built on this (the authorization matrix, the fuzz suite) cover a new RPC the moment it is
added to a .proto: nothing here lists methods by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import coordd_client.v1
from coordd_client.v1 import common_pb2, options_pb2


@dataclass(frozen=True)
class Rpc:
    service: str  # coordd.v1.JobService
    name: str  # GetJob
    method: descriptor.MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def declares_policy(self) -> bool:
        return self.method.GetOptions().HasExtension(options_pb2.policy)

    @property
    def policy(self) -> options_pb2.MethodPolicy:
        return self.method.GetOptions().Extensions[options_pb2.policy]

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(common_pb2.Role.Name(r)[len("ROLE_") :].lower() for r in self.policy.roles)

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)


def all_rpcs() -> list[Rpc]:
    for module in pkgutil.iter_modules(coordd_client.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"coordd_client.v1.{module.name}")
    found: dict[str, Rpc] = {}
    for module in pkgutil.iter_modules(coordd_client.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        file_desc = importlib.import_module(f"coordd_client.v1.{module.name}").DESCRIPTOR
        for service in file_desc.services_by_name.values():
            for method in service.methods:
                rpc = Rpc(service.full_name, method.name, method)
                found[rpc.full_name] = rpc
    return [found[k] for k in sorted(found)]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    details: str = ""

    def __str__(self) -> str:
        return f"{self.code.name}({self.reason}): {self.details[:200]}"


def _outcome(error: grpc.RpcError) -> Outcome:
    reason = ""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # the status detail disagrees with the code: the transport cut the reply
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return Outcome(error.code(), reason, error.details() or "")


def invoke(
    channel: grpc.Channel,
    rpc: Rpc,
    request: Message | list[Message] | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 2.0,
) -> Outcome:
    """Calls `rpc` and returns how it ended. A server stream is read to its first message
    (then cancelled); a client stream sends `request` (a list, or one message)."""
    requests = (
        request if isinstance(request, list) else [request if request is not None else rpc.request_class()]
    )
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": rpc.response_class.FromString,
    }
    try:
        if rpc.client_streaming and rpc.server_streaming:
            call = channel.stream_stream(rpc.path, **kwargs)(
                iter(requests), metadata=metadata, timeout=timeout
            )
            next(iter(call), None)
            call.cancel()
        elif rpc.client_streaming:
            channel.stream_unary(rpc.path, **kwargs)(iter(requests), metadata=metadata, timeout=timeout)
        elif rpc.server_streaming:
            call = channel.unary_stream(rpc.path, **kwargs)(requests[0], metadata=metadata, timeout=timeout)
            next(iter(call), None)
            call.cancel()
        else:
            channel.unary_unary(rpc.path, **kwargs)(requests[0], metadata=metadata, timeout=timeout)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED:
            return Outcome(grpc.StatusCode.OK)
        return _outcome(error)
    return Outcome(grpc.StatusCode.OK)


def by_service(rpcs: list[Rpc]) -> Iterator[tuple[str, list[Rpc]]]:
    services: dict[str, list[Rpc]] = {}
    for rpc in rpcs:
        services.setdefault(rpc.service, []).append(rpc)
    yield from services.items()

"""StatusService: the operator's view of the daemon and its event log."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2

from coordd.api.convert import duration, ts
from coordd.core.events import Event
from coordd.core.paging import PageRequest
from coordd.core.principal import caller
from coordd.domain import status
from coordd.runtime import Runtime
from coordd_client.v1 import status_pb2, status_pb2_grpc

_BACKENDS = {
    "sqlite": status_pb2.DATABASE_BACKEND_SQLITE,
    "postgresql": status_pb2.DATABASE_BACKEND_POSTGRESQL,
}


def event_to_proto(event: Event | status.EventRow) -> status_pb2.Event:
    data = struct_pb2.Struct()
    data.update(event.data or {})
    return status_pb2.Event(
        name=f"events/{event.id}",
        type=event.type,
        subject=event.subject,
        data=data,
        create_time=ts(event.create_time),
    )


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, rt: Runtime, scheduler: status.LiveScheduler) -> None:
        self.rt = rt
        self.scheduler = scheduler

    async def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: Any
    ) -> status_pb2.GetStatusResponse:
        if not status.shows_internals(caller()):
            return status_pb2.GetStatusResponse(
                version=self.rt.version, serving=True, database_backend=_BACKENDS[self.rt.store.backend]
            )
        counts = await self.rt.run(status.counts)
        view = await self.rt.run(status.scheduler_view)
        intervals = {task.name: task.interval for task in self.scheduler.tasks}
        scheduler = status_pb2.SchedulerStatus(is_leader=self.scheduler.is_leader)
        if view.leader is not None:
            scheduler.leader_instance_id = view.leader.instance_id
            scheduler.leader_heartbeat_time.CopyFrom(ts(view.leader.heartbeat_time))
        for run in view.tasks:
            scheduler.tasks.append(
                status_pb2.TaskStatus(
                    name=run.name,
                    interval=duration(intervals.get(run.name, run.interval_s)),
                    last_start_time=ts(run.last_start_time),
                    last_duration=duration(run.last_duration_s),
                    last_error=run.last_error,
                    run_count=run.run_count,
                    failure_count=run.failure_count,
                )
            )
        return status_pb2.GetStatusResponse(
            version=self.rt.version,
            instance_id=self.rt.instance_id,
            start_time=ts(self.rt.start_time),
            uptime=duration(time.monotonic() - self.rt.start_monotonic),
            database_backend=_BACKENDS[self.rt.store.backend],
            event_bus=self.rt.bus.describe(),
            scheduler=scheduler,
            counts=counts,
            open_streams=self.rt.open_streams,
            serving=True,
        )

    async def ListEvents(
        self, request: status_pb2.ListEventsRequest, context: Any
    ) -> status_pb2.ListEventsResponse:
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(status.list_events, page_request, request.type_prefix, request.subject)
        return status_pb2.ListEventsResponse(
            events=[event_to_proto(e) for e in page.items], next_page_token=page.next_token
        )

    async def WatchEvents(
        self, request: status_pb2.WatchEventsRequest, context: Any
    ) -> AsyncIterator[status_pb2.WatchEventsResponse]:
        subscription = self.rt.bus.subscribe(request.type_prefix)
        try:
            async for event in subscription:
                yield status_pb2.WatchEventsResponse(event=event_to_proto(event))
        finally:
            subscription.close()

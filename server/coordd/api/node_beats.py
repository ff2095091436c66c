"""NodeService's heartbeat RPCs (Heartbeat, StreamHeartbeats): a beat is recorded in the
process's tracker (adapters/heartbeats.py) and a change it brings is queued for the batched
writer; mixed into NodeServicer (api/node.py)."""

from __future__ import annotations

from typing import Any

from coordd.adapters.heartbeats import Tracker
from coordd.api.convert import duration, parse_name
from coordd.api.decoding import CheckedStream
from coordd.api.node_convert import assigned_to_proto, replica_from_proto, status_to_proto
from coordd.core.principal import require_user
from coordd.domain import node
from coordd.runtime import Runtime
from coordd_client.v1 import node_pb2


class HeartbeatRpcs:
    rt: Runtime
    tracker: Tracker

    async def _node_info(self) -> node.NodeInfo:
        who = require_user()
        info = self.tracker.cached_node(who.api_key_id) if who.api_key_id else None
        if info is None:
            info = await self.rt.run(node.node_for_key, self.rt, who)
            self.tracker.remember(who.api_key_id, info)
        return info

    async def _beat(self, info: node.NodeInfo, request: Any) -> bool:
        """Records a beat; a change (status, replica reports) is queued for the batched
        writer. Returns whether one was."""
        workloads = request.workloads
        if not workloads:
            return self._plain_beat(info, request)
        reports = []
        for index, report in enumerate(workloads):
            workload_id = parse_name(report.workload, "workloads", f"workloads[{index}].workload")
            state = replica_from_proto(report.state, f"workloads[{index}].state")
            reports.append((workload_id, state, report.message))
        metrics = self._checked_metrics(info, request)
        node.check_reports(reports)
        assigned = {v.workload_id for v in await self._assignments(info.node_id)}
        if any(w not in assigned for w, _, _ in reports):
            await self.rt.run(node.check_reported_workloads, self.rt, info, reports, assigned)
        return self._record_beat(info, reports, metrics)

    def _plain_beat(self, info: node.NodeInfo, request: Any) -> bool:
        """A beat without replica reports (most beats): nothing to await."""
        return self._record_beat(info, [], self._checked_metrics(info, request))

    def _checked_metrics(self, info: node.NodeInfo, request: Any) -> dict[str, float]:
        gauges = request.metrics
        if not gauges:
            return {}
        # Not dict(gauges): upb's map is no dict, and dict() reads it through the
        # pure-Python Mapping.keys view at twice the cost.
        metrics = {key: gauges[key] for key in gauges}
        # A node reports the same gauges beat after beat: their names were checked once.
        if self.tracker.known_metric_keys(info.node_id, metrics):
            node.check_metric_values(metrics)
        else:
            node.check_metrics(metrics)
        return metrics

    def _record_beat(
        self, info: node.NodeInfo, reports: list[tuple[str, str, str]], metrics: dict[str, float]
    ) -> bool:
        change = self.tracker.beat(info, self.rt.now(), reports, metrics)
        if change is None:
            return False
        self.tracker.queue(info, change)
        return True

    async def _committed(self, info: node.NodeInfo) -> None:
        """The node's queued changes are stored (a reply reports what the database says)."""
        await self.tracker.committed(info)
        node.check_can_beat(self.tracker.info.get(info.node_id, info))

    async def _assignments(self, node_id: str) -> list[node.AssignedView]:
        views = self.tracker.cached_assignments(node_id)
        if views is None:
            views = await self.rt.run(node.load_assignments, node_id)
            self.tracker.cache_assignments(node_id, views)
        return views

    async def Heartbeat(self, request: node_pb2.HeartbeatRequest, context: Any) -> node_pb2.HeartbeatResponse:
        info = await self._node_info()
        if await self._beat(info, request):
            await self._committed(info)  # one write for the batch, not one per beat
        views = await self._assignments(info.node_id)
        return node_pb2.HeartbeatResponse(
            node=f"nodes/{info.node_id}",
            status=status_to_proto(info.status),
            assignments=assigned_to_proto(views),
            next_interval=duration(info.interval_s),
            reconnect_backoff_max=duration(node.reconnect_backoff_max_s(info.window_s)),
            restart_grace=duration(node.restart_grace_s(info.window_s)),
        )

    async def StreamHeartbeats(
        self, request_iterator: CheckedStream, context: Any
    ) -> node_pb2.StreamHeartbeatsResponse:
        info = await self._node_info()
        node_id = info.node_id
        beats = 0
        known = self.tracker.info
        read = request_iterator.read  # one await a message (api/decoding.py: CheckedStream)
        plain_beat = self._plain_beat
        while (request := await read()) is not None:
            # Re-read from the cache: a status change made elsewhere shows up here.
            info = known.get(node_id, info)
            # A change is written by the next batch; a beat without reports awaits nothing.
            if request.workloads:
                await self._beat(info, request)
            else:
                plain_beat(info, request)
            beats += 1
        await self._committed(info)
        views = await self._assignments(info.node_id)
        return node_pb2.StreamHeartbeatsResponse(
            node=f"nodes/{info.node_id}",
            beats=beats,
            status=status_to_proto(info.status),
            assignments=assigned_to_proto(views),
            next_interval=duration(info.interval_s),
            reconnect_backoff_max=duration(node.reconnect_backoff_max_s(info.window_s)),
            restart_grace=duration(node.restart_grace_s(info.window_s)),
        )

"""NodeService's monitoring RPCs (issue 14), mixed into the servicer (api/node.py): uptime
windows, incident acknowledgement, silences, the monitoring policy and the SLA report.
The rules are domain/node/ (uptime, escalation, silences, sla, flapping)."""

from __future__ import annotations

from coordd.api.convert import duration, ts
from coordd.domain import node
from coordd_client.v1 import node_pb2


def uptime_to_proto(w: node.Uptime) -> node_pb2.UptimeWindow:
    return node_pb2.UptimeWindow(
        window=duration(w.window_s),
        uptime_percent=w.percent,
        up=duration(w.up_s),
        observed=duration(w.observed_s),
        label=w.label,
        start_time=ts(w.start),
        end_time=ts(w.end),
        down=duration(w.down_s),
        maintenance=duration(w.maintenance_s),
        mass_outage=duration(w.mass_outage_s),
    )


class MonitoringRpcs:
    """The monitoring half of NodeServicer (`self.rt` is the servicer's runtime)."""

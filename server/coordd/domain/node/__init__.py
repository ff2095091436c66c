"""The node domain: projects of operator-run nodes (with inventory) and the workloads placed
on them; heartbeats and up/down detection, the node/workload state machine with its
incidents and notifications, uptime, maintenance windows and operators' reward points.

    access       who may see and change what (node keys may only beat)
    members      project membership by invite: joining a project needs the owner's consent
    policies     policy and inventory values, validation
    projects     nodes (and node key rotation)   workloads     placement (first-fit, spread)
    machine      the state machine: transitions, incidents, notifications, placement
    heartbeats   what a beat means; the beats that write; last-seen flushes
    detection    which nodes are late, and when silence is DOWN (failover grace, mass outage)
    maintenance  uptime       rewards       states (stored states and row types)
    alerts       flapping     silences      escalation (who is told what, and when)

The heartbeat tracker's loop and its Redis use are a runtime adapter (adapters/heartbeats.py).
"""

from coordd.domain.node.access import (
    get_project,
    is_node_key,
    owned_project,
    require_operator,
    visible_node,
    visible_workload,
    watchable_project,
)
from coordd.domain.node.detection import (
    backlog_allowance_s,
    detect_down,
    reconnect_backoff_max_s,
    restart_grace_s,
)
from coordd.domain.node.escalation import (
    acknowledge_incident,
    get_monitoring_policy,
    run_escalations,
    update_monitoring_policy,
)
from coordd.domain.node.flapping import settle_flapping
from coordd.domain.node.heartbeats import (
    AssignedView,
    BeatChange,
    LastSeen,
    NodeInfo,
    SharedDeadlines,
    apply_beat,
    apply_beats,
    check_can_beat,
    check_metric_values,
    check_metrics,
    check_reported_workloads,
    check_reports,
    load_assignments,
    node_for_key,
    record_last_seen,
)
from coordd.domain.node.machine import STATUS_CHANGED, WORKLOAD_STATUS_CHANGED, nodes_key
from coordd.domain.node.maintenance import (
    create_maintenance_window,
    list_maintenance_windows,
    run_maintenance,
)
from coordd.domain.node.members import (
    ProjectMember,
    accept_invite,
    create_invite,
    list_members,
    remove_member,
)
from coordd.domain.node.nodes import (
    ROTATION_OVERLAP_S,
    decommission_node,
    get_node,
    list_nodes,
    register_node,
    rotate_node_key,
    update_node,
)
from coordd.domain.node.policies import HealthPolicy, Inventory, MonitoringPolicy, Resources, RewardPolicy
from coordd.domain.node.projects import create_project, list_projects, project_health, update_project
from coordd.domain.node.rewards import credit_rewards, list_reward_entries, reward_balance
from coordd.domain.node.silences import Silence, create_silence, end_silence, list_silences, run_silences
from coordd.domain.node.sla import SlaRow
from coordd.domain.node.sla import aggregate as sla_aggregate
from coordd.domain.node.sla import check_access as sla_check_access
from coordd.domain.node.sla import csv_lines as sla_csv
from coordd.domain.node.sla import page_rows as sla_page_rows
from coordd.domain.node.sla import period as sla_period
from coordd.domain.node.states import (
    Assignment,
    Incident,
    MaintenanceWindow,
    Node,
    Project,
    RewardEntry,
    Transition,
    Workload,
)
from coordd.domain.node.uptime import (
    NodeTransition,
    Uptime,
    get_uptime,
    last_transition_id,
    list_incidents,
    list_transitions,
    month_bounds,
    transitions_after,
)
from coordd.domain.node.workloads import (
    create_workload,
    delete_workload,
    get_workload,
    list_assignments,
    list_workloads,
    place_all,
    update_workload,
    workload_assignments,
)

__all__ = [
    "ROTATION_OVERLAP_S",
    "STATUS_CHANGED",
    "WORKLOAD_STATUS_CHANGED",
    "AssignedView",
    "Assignment",
    "BeatChange",
    "HealthPolicy",
    "Incident",
    "Inventory",
    "LastSeen",
    "MaintenanceWindow",
    "MonitoringPolicy",
    "Node",
    "NodeInfo",
    "NodeTransition",
    "Project",
    "ProjectMember",
    "Resources",
    "RewardEntry",
    "RewardPolicy",
    "SharedDeadlines",
    "Silence",
    "SlaRow",
    "Transition",
    "Uptime",
    "Workload",
    "accept_invite",
    "acknowledge_incident",
    "apply_beat",
    "apply_beats",
    "backlog_allowance_s",
    "check_can_beat",
    "check_metric_values",
    "check_metrics",
    "check_reported_workloads",
    "check_reports",
    "create_invite",
    "create_maintenance_window",
    "create_project",
    "create_silence",
    "create_workload",
    "credit_rewards",
    "decommission_node",
    "delete_workload",
    "detect_down",
    "end_silence",
    "get_monitoring_policy",
    "get_node",
    "get_project",
    "get_uptime",
    "get_workload",
    "is_node_key",
    "last_transition_id",
    "list_assignments",
    "list_incidents",
    "list_maintenance_windows",
    "list_members",
    "list_nodes",
    "list_projects",
    "list_reward_entries",
    "list_silences",
    "list_transitions",
    "list_workloads",
    "load_assignments",
    "month_bounds",
    "node_for_key",
    "nodes_key",
    "owned_project",
    "place_all",
    "project_health",
    "reconnect_backoff_max_s",
    "record_last_seen",
    "register_node",
    "remove_member",
    "require_operator",
    "restart_grace_s",
    "reward_balance",
    "rotate_node_key",
    "run_escalations",
    "run_maintenance",
    "run_silences",
    "settle_flapping",
    "sla_aggregate",
    "sla_check_access",
    "sla_csv",
    "sla_page_rows",
    "sla_period",
    "transitions_after",
    "update_monitoring_policy",
    "update_node",
    "update_project",
    "update_workload",
    "visible_node",
    "visible_workload",
    "watchable_project",
    "workload_assignments",
]

"""Placement: first-fit over UP nodes, spread (at most one replica of a workload per node,
least-loaded nodes first), within each node's free inventory and the workload's labels.

Runs inside the caller's write transaction. On PostgreSQL the project row is locked first,
so two replicas placing the same project at once cannot oversubscribe a node.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from coordd.store.db import Tx
from coordd.store.node import queries
from coordd.store.node.models import Assignment, Node, Project, Workload


@dataclass
class Free:
    """What is left on a node after its assignments."""

    cpu_millis: int
    memory_mb: int
    disk_gb: int
    gpus: dict[str, int] = field(default_factory=dict)
    replicas: int = 0

    def fits(self, w: Workload) -> bool:
        if w.cpu_millis > self.cpu_millis or w.memory_mb > self.memory_mb or w.disk_gb > self.disk_gb:
            return False
        if w.gpu_count <= 0:
            return True
        if w.gpu_model:
            return self.gpus.get(w.gpu_model, 0) >= w.gpu_count
        return sum(self.gpus.values()) >= w.gpu_count

    def take(self, w: Workload) -> None:
        self.cpu_millis -= w.cpu_millis
        self.memory_mb -= w.memory_mb
        self.disk_gb -= w.disk_gb
        self.replicas += 1
        need = w.gpu_count
        models = [w.gpu_model] if w.gpu_model else sorted(self.gpus)
        for model in models:
            used = min(need, self.gpus.get(model, 0))
            self.gpus[model] = self.gpus.get(model, 0) - used
            need -= used


def _free(node: Node) -> Free:
    gpus: dict[str, int] = defaultdict(int)
    for gpu in node.gpus or []:
        gpus[str(gpu.get("model", ""))] += int(gpu.get("count", 0))
    return Free(node.cpu_cores * 1000, node.memory_mb, node.disk_gb, dict(gpus))


def labels_match(wanted: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def place_project(tx: Tx, project: Project) -> set[str]:
    """Trims replicas beyond the wanted count, then places missing ones. Returns the ids
    of workloads whose assignments changed."""
    queries.lock_project(project.id)
    workloads = queries.workloads_of_project(project.id)
    if not workloads:
        return set()
    by_id = {w.id: w for w in workloads}
    assignments = queries.assignments_of_workloads(list(by_id))
    hosted: dict[str, list[Assignment]] = defaultdict(list)
    for a in assignments:
        hosted[a.workload_id].append(a)
    changed: set[str] = set()
    touched_nodes: set[str] = set()
    # Scale down first: the newest replicas go.
    for w in workloads:
        extra = hosted[w.id][w.replicas :] if len(hosted[w.id]) > w.replicas else []
        for a in extra:
            queries.delete_assignment(a)
            hosted[w.id].remove(a)
            changed.add(w.id)
            touched_nodes.add(a.node_id)
    needing = [w for w in workloads if len(hosted[w.id]) < w.replicas]
    if needing:
        nodes = queries.up_nodes(project.id)
        free = {n.id: _free(n) for n in nodes}
        on_node: dict[str, set[str]] = defaultdict(set)
        for a in queries.assignments_on_nodes([n.id for n in nodes]):
            if a.node_id in free:
                free[a.node_id].take(a.workload)
                on_node[a.node_id].add(a.workload_id)
        for w in needing:
            for _ in range(w.replicas - len(hosted[w.id])):
                candidates = [
                    n
                    for n in nodes
                    if w.id not in on_node[n.id]
                    and labels_match(w.placement_labels or {}, n.labels or {})
                    and free[n.id].fits(w)
                ]
                if not candidates:
                    break
                # Spread: least-loaded first, then the oldest node (stable first-fit order).
                node = min(candidates, key=lambda n: (free[n.id].replicas, n.id))
                a = queries.insert_assignment(w.id, node.id, tx.now)
                hosted[w.id].append(a)
                free[node.id].take(w)
                on_node[node.id].add(w.id)
                changed.add(w.id)
                touched_nodes.add(node.id)
    for node_id in sorted(touched_nodes):
        tx.emit("node.assignments_changed", f"nodes/{node_id}", {})
    return changed

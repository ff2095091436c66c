"""Projects: a network of nodes with its health and reward policies, owned by an operator."""

from __future__ import annotations

from coordd.core.errors import AlreadyExists, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator
from coordd.domain.node.policies import (
    SLUG_RE,
    HealthPolicy,
    RewardPolicy,
    check_health_policy,
    check_name,
    check_reward_policy,
)
from coordd.runtime import Runtime
from coordd.store.node import queries
from coordd.store.node.models import Project


def _apply_policies(project: Project, health: HealthPolicy | None, reward: RewardPolicy | None) -> None:
    if health is not None:
        project.heartbeat_interval_s = health.interval_s
        project.misses = health.misses
        project.grace_s = health.grace_s
        project.successes_before_up = health.successes_before_up
        project.mass_outage_share = health.mass_outage_share
        project.mass_outage_min_nodes = health.mass_outage_min_nodes
    if reward is not None:
        project.points_per_up_hour = reward.points_per_up_hour
        project.reward_cap_per_day = reward.cap_per_day


def create_project(
    rt: Runtime, who: Principal, display_name: str, slug: str, health: HealthPolicy, reward: RewardPolicy
) -> Project:
    require_operator(who)
    v = Violations()
    check_name(v, display_name, "display_name")
    if not SLUG_RE.match(slug):
        v.add("slug", "lower-case letters, digits and dashes, 1 to 63 characters")
    check_health_policy(v, health)
    check_reward_policy(v, reward)
    v.raise_if_any()
    try:
        with rt.store.write() as tx:
            project = Project(owner=who.user_id, display_name=display_name, slug=slug)
            _apply_policies(project, health, reward)
            project.create_time = project.update_time = tx.now
            queries.insert_project(project)
            tx.emit("node.project.created", f"projects/{project.id}", {"slug": slug})
    except queries.Duplicate:
        raise AlreadyExists(
            f"a project with slug {slug!r} already exists", reason="SLUG_TAKEN", metadata={"slug": slug}
        ) from None
    return project


def list_projects(page: PageRequest) -> Page[Project]:
    return queries.page_projects(page)


def update_project(
    rt: Runtime,
    who: Principal,
    project_id: str,
    display_name: str | None,
    health: HealthPolicy | None,
    reward: RewardPolicy | None,
    public_status: bool | None = None,
) -> Project:
    """The owner (or an admin) changes what is given (None: left as it is). `public_status`
    opts the project in to (or out of) its public status page."""
    require_operator(who)
    v = Violations()
    if display_name is not None:
        check_name(v, display_name, "project.display_name")
    if health is not None:
        check_health_policy(v, health, "project.health_policy")
    if reward is not None:
        check_reward_policy(v, reward, "project.reward_policy")
    v.raise_if_any()
    with rt.store.write() as tx:
        project = owned_project(who, project_id)
        if display_name is not None:
            project.display_name = display_name
        _apply_policies(project, health, reward)
        if public_status is not None:
            project.public_status = public_status
        project.update_time = tx.now
        project.save()
        tx.emit(
            "node.project.updated",
            f"projects/{project.id}",
            {"project": project.id, "public_status": project.public_status},
        )
    return project


def project_health(project: Project) -> HealthPolicy:
    return HealthPolicy(
        project.heartbeat_interval_s,
        project.misses,
        project.grace_s,
        project.successes_before_up,
        project.mass_outage_share,
        project.mass_outage_min_nodes,
    )

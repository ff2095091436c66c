"""Each coordd method's access rule, read from its `(coordd.v1.policy)` proto option."""

from __future__ import annotations

from google.protobuf import descriptor_pool

from coordd_client.v1 import common_pb2, options_pb2


class Policy:
    __slots__ = ("full_name", "mutating", "node_agent", "public", "roles", "service")

    def __init__(
        self, public: bool, mutating: bool, roles: frozenset[str], node_agent: bool = False, method: str = ""
    ) -> None:
        self.public = public
        self.mutating = mutating
        self.roles = roles
        self.node_agent = node_agent
        # What an API key's scopes name: `coordd.v1.JobService` and `coordd.v1.JobService.GetJob`.
        self.service, _, name = method.lstrip("/").partition("/")
        self.full_name = f"{self.service}.{name}"


_PUBLIC = Policy(public=True, mutating=False, roles=frozenset())
_policies: dict[str, Policy] = {}


def policy_for(method: str) -> Policy:
    """Reads (coordd.v1.policy) from the method's descriptor; other services are public."""
    found = _policies.get(method)
    if found is not None:
        return found
    policy = _PUBLIC
    if method.startswith("/coordd."):
        full_name = method.lstrip("/").replace("/", ".")
        try:
            desc = descriptor_pool.Default().FindMethodByName(full_name)
        except KeyError:
            desc = None
        if desc is not None:
            opts = desc.GetOptions().Extensions[options_pb2.policy]
            roles = frozenset(common_pb2.Role.Name(r)[5:].lower() for r in opts.roles)
            policy = Policy(opts.public, opts.mutating, roles, opts.node_agent, method)
        else:
            policy = Policy(public=False, mutating=False, roles=frozenset(), method=method)
    _policies[method] = policy
    return policy

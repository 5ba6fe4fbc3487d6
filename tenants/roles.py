"""Portal users' roles in a tenant and what each may do: the permission matrix.

A role is a set of scopes (tenants.scopes): every endpoint already names the scope it needs, so a user's
request is allowed exactly when the user's role in the request's tenant holds that scope. The same check
serves API keys (their own scopes), OAuth clients and portal users, so there is one matrix to read.
"""

from __future__ import annotations

from tenants.scopes import SCOPES

OWNER = "owner"
ADMIN = "admin"
DEVELOPER = "developer"
VIEWER = "viewer"
FINANCE = "finance"

ROLES: tuple[str, ...] = (OWNER, ADMIN, DEVELOPER, VIEWER, FINANCE)

_READ_DATA = frozenset({"tenant:read", "agents:read", "runs:read", "tools:read", "memories:read",
                        "guardrails:read", "pings:read"})
_BUILD = frozenset({"agents:write", "runs:write", "approvals:write", "tools:write", "memories:write",
                    "guardrails:write", "pings:write", "keys:read", "keys:write", "oauth:read", "oauth:write"})

ROLE_SCOPES: dict[str, frozenset[str]] = {
    # Everything, including owners' own membership.
    OWNER: frozenset(SCOPES),
    # Everything an owner can do, but an admin cannot make, change or remove owners (can_grant).
    ADMIN: frozenset(SCOPES),
    # Builds and runs agents and their tools; reads who is in the tenant, never changes it; no audit log.
    DEVELOPER: _READ_DATA | _BUILD | {"members:read", "usage:read", "budgets:read"},
    # Reads the tenant's agents, runs and settings; changes nothing.
    VIEWER: _READ_DATA | {"usage:read"},
    # Reads the tenant, its audit trail, usage and invoices; sets budgets and the plan; no agent data.
    FINANCE: frozenset({"tenant:read", "audit:read", "members:read", "usage:read", "budgets:read", "budgets:write",
                        "billing:read", "billing:write"}),
}

ROLE_DESCRIPTIONS: dict[str, str] = {
    OWNER: "Everything, including managing other owners.",
    ADMIN: "Everything but changing or removing owners.",
    DEVELOPER: "Builds and runs agents, tools, memories, guardrails, API keys and OAuth clients.",
    VIEWER: "Reads agents, runs, tools, memories and guardrails; changes nothing.",
    FINANCE: "Reads the tenant, its members, its audit log, usage and invoices; sets budgets and the plan.",
}


def scopes_for_role(role: str) -> frozenset[str]:
    """The scopes a member with ``role`` holds. Raises KeyError for an unknown role."""
    return ROLE_SCOPES[role]


def can_grant(*, granter_role: str, role: str) -> bool:
    """Whether a member with ``granter_role`` may give (or change, or remove) a membership of ``role``."""
    if granter_role == OWNER:
        return True
    return granter_role == ADMIN and role != OWNER

"""The permission matrix: what each portal role holds, and who may grant which role."""

from __future__ import annotations

import pytest

from tenants import roles
from tenants.scopes import SCOPES


def test_every_role_holds_only_known_scopes_and_every_scope_is_held_by_an_owner():
    for role in roles.ROLES:
        assert roles.scopes_for_role(role) <= set(SCOPES), role
    assert roles.scopes_for_role(roles.OWNER) == set(SCOPES)


def test_a_viewer_writes_nothing_and_finance_reads_no_agent_data():
    assert not [scope for scope in roles.scopes_for_role(roles.VIEWER) if scope.endswith(":write")]
    finance = roles.scopes_for_role(roles.FINANCE)
    assert {"agents:read", "runs:read", "memories:read", "tools:read"}.isdisjoint(finance)
    assert "audit:read" in finance


def test_a_developer_builds_but_cannot_change_members_or_read_the_audit_log():
    developer = roles.scopes_for_role(roles.DEVELOPER)
    assert {"agents:write", "runs:write", "tools:write", "keys:write"} <= developer
    assert "members:write" not in developer and "audit:read" not in developer


@pytest.mark.parametrize(("granter", "role", "allowed"), [
    (roles.OWNER, roles.OWNER, True), (roles.OWNER, roles.FINANCE, True),
    (roles.ADMIN, roles.OWNER, False), (roles.ADMIN, roles.ADMIN, True), (roles.ADMIN, roles.VIEWER, True),
    (roles.DEVELOPER, roles.VIEWER, False), (roles.VIEWER, roles.VIEWER, False), (roles.FINANCE, roles.FINANCE, False),
])
def test_who_may_grant_which_role(granter, role, allowed):
    assert roles.can_grant(granter_role=granter, role=role) is allowed


def test_an_unknown_role_has_no_scopes():
    with pytest.raises(KeyError):
        roles.scopes_for_role("superuser")

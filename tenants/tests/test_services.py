from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context, schema_exists

from common.actors import Actor
from common.errors import InvalidInput
from conftest import TEST_ACTOR, unique_slug
from control_plane.audit.models import AuditEvent
from tenants import services
from tenants.errors import (
    ApiKeyAlreadyRevoked,
    ApiKeyNotFound,
    CredentialExpired,
    CredentialRevoked,
    DomainTaken,
    InvalidCredentials,
    ScopeEscalation,
    TenantSlugTaken,
    TenantStatusConflict,
    TenantSuspended,
    UnknownScope,
)
from tenants.models import ApiKey, Tenant, TenantLifecycleEvent
from tenants.scopes import ALL_SCOPES


def table_names(schema: str) -> set[str]:
    with connection.cursor() as cursor:  # the catalog: information_schema shows only the current role's tables
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])
        return {row[0] for row in cursor.fetchall()}


def test_provision_creates_a_migrated_schema_and_an_admin_key(db):
    # given
    slug = unique_slug("acme")
    # when
    provisioned = services.tenant_provision(name="Acme", slug=slug, sla_tier="enterprise",
                                            domains=["Acme.Example.com"], actor=TEST_ACTOR)
    # then
    tenant = provisioned.tenant
    assert tenant.schema_name == "t_" + slug.replace("-", "_")
    assert tenant.status == Tenant.Status.ACTIVE
    assert tenant.sla_tier == "enterprise"
    assert [d.domain for d in tenant.domains.all()] == ["acme.example.com"]
    assert schema_exists(tenant.schema_name)
    assert {"audit_auditevent", "data_plane_ping", "django_migrations"} <= table_names(tenant.schema_name)
    assert "tenants_tenant" not in table_names(tenant.schema_name)  # shared apps stay in public
    key = services.api_key_authenticate(raw=provisioned.admin_key.plaintext)
    assert key.tenant_id == tenant.id
    assert sorted(key.scopes) == sorted(ALL_SCOPES)
    assert list(TenantLifecycleEvent.objects.filter(tenant=tenant).values_list("action", flat=True)) == ["provision"]
    with schema_context(tenant.schema_name):
        assert list(AuditEvent.objects.order_by("occurred_at").values_list("action", flat=True)) == [
            "tenant.provision", "encryption.keyring_create", "api_key.create"]


@pytest.mark.parametrize("slug", ["ab", "1abc", "Abc", "abc-", "a_bc", "public", "x" * 49])
def test_provision_rejects_bad_slugs_and_creates_nothing(db, slug):
    before = Tenant.objects.count()
    with pytest.raises(InvalidInput) as exc:
        services.tenant_provision(name="Bad", slug=slug, sla_tier="standard", domains=[], actor=TEST_ACTOR)
    assert slug in exc.value.message or "reserved" in exc.value.message
    assert Tenant.objects.count() == before


def test_provision_rejects_a_taken_slug(tenant_a):
    with pytest.raises(TenantSlugTaken) as exc:
        services.tenant_provision(name="Again", slug=tenant_a.tenant.slug, sla_tier="standard", domains=[],
                                  actor=TEST_ACTOR)
    assert exc.value.http_status == 409


def test_provision_rejects_a_domain_of_another_tenant(db):
    services.tenant_provision(name="One", slug=unique_slug("one"), sla_tier="standard",
                              domains=["shared.example.com"], actor=TEST_ACTOR)
    slug = unique_slug("two")
    with pytest.raises(DomainTaken):
        services.tenant_provision(name="Two", slug=slug, sla_tier="standard", domains=["shared.example.com"],
                                  actor=TEST_ACTOR)
    assert not Tenant.objects.filter(slug=slug).exists()


def test_provision_rejects_an_unknown_tier(db):
    with pytest.raises(InvalidInput) as exc:
        services.tenant_provision(name="X", slug=unique_slug("x"), sla_tier="gold", domains=[], actor=TEST_ACTOR)
    assert "gold" in exc.value.message


def test_suspend_then_reactivate_records_each_transition(tenant_a):
    tenant = tenant_a.tenant
    services.tenant_suspend(tenant=tenant, reason="invoice overdue", actor=TEST_ACTOR)
    with pytest.raises(TenantSuspended) as exc:
        services.api_key_authenticate(raw=tenant_a.key)
    assert "invoice overdue" in exc.value.message
    assert exc.value.http_status == 403
    services.tenant_reactivate(tenant=tenant, actor=TEST_ACTOR)
    assert services.api_key_authenticate(raw=tenant_a.key).tenant_id == tenant.id
    events = TenantLifecycleEvent.objects.filter(tenant=tenant).order_by("occurred_at")
    assert [(e.action, e.from_status, e.to_status) for e in events][-2:] == [
        ("suspend", "active", "suspended"), ("reactivate", "suspended", "active")]


def test_illegal_transitions_are_conflicts_and_change_nothing(tenant_a):
    tenant = tenant_a.tenant
    with pytest.raises(TenantStatusConflict) as exc:
        services.tenant_reactivate(tenant=tenant, actor=TEST_ACTOR)
    assert "active" in exc.value.message
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.ACTIVE


def test_delete_drops_the_schema_revokes_keys_and_keeps_a_tombstone(db):
    provisioned = services.tenant_provision(name="Gone", slug=unique_slug("gone"), sla_tier="standard",
                                            domains=["gone.example.com"], actor=TEST_ACTOR)
    tenant = provisioned.tenant
    services.tenant_delete(tenant=tenant, actor=TEST_ACTOR)
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.DELETED
    assert not schema_exists(tenant.schema_name)
    assert tenant.domains.count() == 0
    assert ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).count() == 0
    with pytest.raises(CredentialRevoked):
        services.api_key_authenticate(raw=provisioned.admin_key.plaintext)
    with pytest.raises(TenantStatusConflict):
        services.tenant_delete(tenant=tenant, actor=TEST_ACTOR)


def test_key_creation_validates_scopes(tenant_a):
    tenant = tenant_a.tenant
    with pytest.raises(UnknownScope) as exc:
        services.api_key_create(tenant=tenant, name="k", scopes=["keys:read", "root"], expires_at=None,
                                actor=TEST_ACTOR, granting_scopes=None)
    assert "root" in exc.value.message
    with pytest.raises(ScopeEscalation) as exc:
        services.api_key_create(tenant=tenant, name="k", scopes=["keys:write"], expires_at=None,
                                actor=TEST_ACTOR, granting_scopes=["keys:read"])
    assert "keys:write" in exc.value.message
    with pytest.raises(InvalidInput):
        services.api_key_create(tenant=tenant, name="k", scopes=["keys:read"],
                                expires_at=timezone.now() - timedelta(seconds=1), actor=TEST_ACTOR,
                                granting_scopes=None)
    assert ApiKey.objects.filter(tenant=tenant, name="k").count() == 0


def test_expired_key_is_refused(tenant_a):
    issued = services.api_key_create(tenant=tenant_a.tenant, name="short", scopes=["tenant:read"],
                                     expires_at=timezone.now() + timedelta(hours=1), actor=TEST_ACTOR,
                                     granting_scopes=None)
    ApiKey.objects.filter(pk=issued.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(CredentialExpired) as exc:
        services.api_key_authenticate(raw=issued.plaintext)
    assert exc.value.http_status == 401


def test_revoked_key_is_refused_and_cannot_be_revoked_twice(tenant_a):
    issued = services.api_key_create(tenant=tenant_a.tenant, name="temp", scopes=["tenant:read"],
                                     expires_at=None, actor=TEST_ACTOR, granting_scopes=None)
    services.api_key_revoke(tenant=tenant_a.tenant, key_id=issued.key.id, actor=TEST_ACTOR)
    with pytest.raises(CredentialRevoked):
        services.api_key_authenticate(raw=issued.plaintext)
    with pytest.raises(ApiKeyAlreadyRevoked):
        services.api_key_revoke(tenant=tenant_a.tenant, key_id=issued.key.id, actor=TEST_ACTOR)
    with schema_context(tenant_a.schema):
        assert AuditEvent.objects.filter(action="api_key.revoke", target_id=str(issued.key.id)).count() == 1


def test_a_tenant_cannot_revoke_another_tenants_key(tenant_a, tenant_b):
    issued = services.api_key_create(tenant=tenant_a.tenant, name="mine", scopes=["tenant:read"],
                                     expires_at=None, actor=TEST_ACTOR, granting_scopes=None)
    with pytest.raises(ApiKeyNotFound):
        services.api_key_revoke(tenant=tenant_b.tenant, key_id=issued.key.id, actor=TEST_ACTOR)
    issued.key.refresh_from_db()
    assert issued.key.revoked_at is None


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
    lambda k: "agp_ffffffffffff_" + k.split("_")[2],  # unknown lookup id
    lambda k: "agpop" + k[3:],  # an operator prefix on a tenant key
    lambda k: "not a key",
])
def test_tampered_keys_are_invalid(tenant_a, mangle):
    with pytest.raises(InvalidCredentials):
        services.api_key_authenticate(raw=mangle(tenant_a.key))


def test_last_used_is_recorded_at_most_once_a_minute(tenant_a):
    issued = services.api_key_create(tenant=tenant_a.tenant, name="used", scopes=["tenant:read"],
                                     expires_at=None, actor=TEST_ACTOR, granting_scopes=None)
    first = services.api_key_authenticate(raw=issued.plaintext).last_used_at
    second = services.api_key_authenticate(raw=issued.plaintext).last_used_at
    assert first is not None
    assert second == first
    ApiKey.objects.filter(pk=issued.key.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    third = services.api_key_authenticate(raw=issued.plaintext).last_used_at
    assert third > first


def test_operator_key_replace_revokes_the_previous_one(db):
    name = unique_slug("ops")
    old = services.operator_key_create(name=name)
    new = services.operator_key_create(name=name, replace_existing=True)
    with pytest.raises(CredentialRevoked):
        services.operator_key_authenticate(raw=old.plaintext)
    assert services.operator_key_authenticate(raw=new.plaintext).id == new.key.id


def test_a_tenant_key_is_not_an_operator_key(tenant_a):
    with pytest.raises(InvalidCredentials):
        services.operator_key_authenticate(raw=tenant_a.key)


def test_keys_can_only_be_issued_to_active_tenants(tenant_a):
    services.tenant_suspend(tenant=tenant_a.tenant, reason="x", actor=Actor(kind="system", id="t"))
    tenant_a.tenant.refresh_from_db()
    with pytest.raises(TenantStatusConflict):
        services.api_key_create(tenant=tenant_a.tenant, name="k", scopes=["tenant:read"], expires_at=None,
                                actor=TEST_ACTOR, granting_scopes=None)

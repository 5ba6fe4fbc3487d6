"""Members (roles, can_grant, the last owner) and invitations (single-use tokens sent by email)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, bearer, unique_slug
from control_plane.audit.models import AuditEvent
from control_plane.identity import services
from control_plane.identity.errors import LastOwner
from control_plane.identity.models import Invitation, Membership
from control_plane.identity.tests.factories import PASSWORD, MembershipFactory
from tenants import roles

NEW_PASSWORD = "invited person passphrase 7"


def _as(membership) -> dict:  # type: ignore[no-untyped-def]
    return {"HTTP_X_AGENTPLANE_TENANT": membership.tenant.slug}


def _client(membership) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(membership.user)
    return client


def _patch(client: Client, membership, target_id, role: str, **extra):  # type: ignore[no-untyped-def]
    return client.patch(f"/v1/members/{target_id}", json.dumps({"role": role}), content_type="application/json",
                        **extra)


def _token_from(message) -> str:  # type: ignore[no-untyped-def]
    return re.search(r"\?token=([A-Za-z0-9_\-]+)", message.body).group(1)


def _accept(token: str, **body):  # type: ignore[no-untyped-def]
    return Client().post("/v1/invitations/accept", json.dumps({"token": token, **body}),
                         content_type="application/json")


# --- members -------------------------------------------------------------------------------------

def test_members_are_listed_with_their_roles(tenant_a):
    owner = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    finance = MembershipFactory(tenant=tenant_a.tenant, role=roles.FINANCE)
    response = _client(finance).get("/v1/members", **_as(finance))
    assert response.status_code == 200
    assert [(m["email"], m["role"], m["totp_enabled"]) for m in response.json()["results"]] == [
        (owner.user.email, "owner", False), (finance.user.email, "finance", False)]


def test_an_admin_changes_a_developer_into_a_viewer_and_it_is_audited_with_the_admin(tenant_a):
    # given
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    developer = MembershipFactory(tenant=tenant_a.tenant, role=roles.DEVELOPER)
    # when
    response = _patch(_client(admin), admin, developer.id, roles.VIEWER, **_as(admin))
    # then
    assert response.status_code == 200 and response.json()["role"] == "viewer"
    assert Membership.objects.get(id=developer.id).role == roles.VIEWER
    with schema_context(tenant_a.schema):
        event = AuditEvent.objects.get(action="member.role_change", target_id=str(developer.id))
    assert (event.actor_kind, event.actor_id) == ("user", str(admin.user.pk))
    assert event.data == {"email": developer.user.email, "from_role": "developer", "to_role": "viewer"}


@pytest.mark.parametrize(("target_role", "new_role"), [(roles.DEVELOPER, roles.OWNER), (roles.OWNER, roles.VIEWER)])
def test_an_admin_cannot_make_or_change_an_owner(tenant_a, target_role, new_role):
    MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    target = MembershipFactory(tenant=tenant_a.tenant, role=target_role)
    response = _patch(_client(admin), admin, target.id, new_role, **_as(admin))
    assert (response.status_code, response.json()["code"]) == (403, "role_not_grantable")
    assert Membership.objects.get(id=target.id).role == target_role


def test_an_admin_cannot_remove_an_owner_but_an_owner_can(tenant_a):
    first_owner = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    second_owner = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    refused = _client(admin).delete(f"/v1/members/{second_owner.id}", **_as(admin))
    removed = _client(first_owner).delete(f"/v1/members/{second_owner.id}", **_as(first_owner))
    assert refused.status_code == 403
    assert removed.status_code == 204
    assert not Membership.objects.filter(id=second_owner.id).exists()
    assert User.objects.filter(id=second_owner.user_id).exists()  # the account stays


def test_the_last_owner_cannot_be_demoted_or_removed(tenant_a):
    # given
    owner = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    client = _client(owner)
    # when
    demoted = _patch(client, owner, owner.id, roles.ADMIN, **_as(owner))
    removed = client.delete(f"/v1/members/{owner.id}", **_as(owner))
    # then
    assert (demoted.status_code, demoted.json()["code"]) == (409, "last_owner")
    assert (removed.status_code, removed.json()["code"]) == (409, "last_owner")
    assert Membership.objects.get(id=owner.id).role == roles.OWNER
    # with a second owner the first may step down
    MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    assert _patch(client, owner, owner.id, roles.ADMIN, **_as(owner)).status_code == 200


def test_an_api_key_with_members_write_acts_as_an_admin(client, tenant_a):
    developer = MembershipFactory(tenant=tenant_a.tenant, role=roles.DEVELOPER)
    owner = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    promoted = _patch(client, None, developer.id, roles.ADMIN, **bearer(tenant_a.key))
    to_owner = _patch(client, None, developer.id, roles.OWNER, **bearer(tenant_a.key))
    owner_changed = _patch(client, None, owner.id, roles.VIEWER, **bearer(tenant_a.key))
    assert promoted.status_code == 200
    assert to_owner.status_code == owner_changed.status_code == 403


def test_unknown_role_is_a_400_naming_the_roles(tenant_a):
    owner = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    response = _patch(_client(owner), owner, owner.id, "superuser", **_as(owner))
    assert response.status_code == 400 and "role" in response.json()["errors"]


def test_owners_demoting_each_other_keep_one_owner(tenant_a):
    first = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    second = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    services.membership_role_change(tenant=tenant_a.tenant, membership_id=second.id, role=roles.ADMIN,
                                    actor=TEST_ACTOR, granter_role=roles.OWNER)
    with pytest.raises(LastOwner):
        services.membership_role_change(tenant=tenant_a.tenant, membership_id=first.id, role=roles.ADMIN,
                                        actor=TEST_ACTOR, granter_role=roles.OWNER)
    assert Membership.objects.filter(tenant=tenant_a.tenant, role=roles.OWNER).count() == 1


# --- invitations ---------------------------------------------------------------------------------

def _invite(membership, email: str, role: str, **extra):  # type: ignore[no-untyped-def]
    return _client(membership).post("/v1/invitations", json.dumps({"email": email, "role": role}),
                                    content_type="application/json", **_as(membership), **extra)


def test_an_invitation_is_emailed_once_and_only_its_hash_is_kept(tenant_a, django_capture_on_commit_callbacks):
    # given
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = _invite(admin, "New.Person@Example.com", roles.DEVELOPER)
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["email"], body["role"], body["status"]) == ("new.person@example.com", "developer", "pending")
    assert "token" not in body
    [message] = mail.outbox
    assert message.to == ["new.person@example.com"] and tenant_a.tenant.name in message.subject
    token = _token_from(message)
    invitation = Invitation.objects.get(id=body["id"])
    assert token not in invitation.token_hash and len(invitation.token_hash) == 64
    with schema_context(tenant_a.schema):
        event = AuditEvent.objects.get(action="invitation.create", target_id=body["id"])
    assert (event.actor_kind, event.actor_id) == ("user", str(admin.user.pk))
    assert token not in json.dumps(event.data)
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)
    listed = _client(admin).get("/v1/invitations", **_as(admin)).json()["results"]
    assert [item["id"] for item in listed] == [body["id"]]


def test_accepting_creates_the_user_once_and_uses_up_the_invitation(tenant_a, django_capture_on_commit_callbacks):
    # given
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        _invite(admin, "fresh@example.com", roles.VIEWER)
    token = _token_from(mail.outbox[0])
    # when: no password, then a weak one, then a good one, then again
    without = _accept(token)
    weak = _accept(token, password="password")
    accepted = _accept(token, password=NEW_PASSWORD, name="Fresh")
    again = _accept(token, password=NEW_PASSWORD)
    # then
    assert (without.status_code, without.json()["code"]) == (400, "password_required")
    assert weak.status_code == 400 and weak.json()["errors"]["password"]
    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["user_created"] is True and accepted.json()["role"] == "viewer"
    assert (again.status_code, again.json()["code"]) == (409, "invitation_not_pending")
    user = User.objects.get(username="fresh@example.com")
    assert user.first_name == "Fresh" and user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(user=user, tenant=tenant_a.tenant).role == roles.VIEWER
    signed_in = Client()
    assert signed_in.post("/v1/auth/login", json.dumps({"email": "fresh@example.com", "password": NEW_PASSWORD}),
                          content_type="application/json").status_code == 200
    with schema_context(tenant_a.schema):
        assert AuditEvent.objects.filter(action="member.add", actor_id=str(user.pk)).count() == 1
        assert NEW_PASSWORD not in json.dumps(list(AuditEvent.objects.values_list("data", flat=True)))


def test_an_existing_user_is_added_and_keeps_their_password(tenant_a, tenant_b, django_capture_on_commit_callbacks):
    # given a member of B invited to A
    existing = MembershipFactory(tenant=tenant_b.tenant, role=roles.OWNER)
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        _invite(admin, existing.user.email, roles.DEVELOPER)
    # when
    response = _accept(_token_from(mail.outbox[0]), password="attacker chosen password 1")
    # then
    assert response.status_code == 201 and response.json()["user_created"] is False
    existing.user.refresh_from_db()
    assert existing.user.check_password(PASSWORD)
    assert Membership.objects.get(user=existing.user, tenant=tenant_a.tenant).role == roles.DEVELOPER


def test_expired_revoked_and_unknown_tokens_are_refused(tenant_a, django_capture_on_commit_callbacks):
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        expired = _invite(admin, "late@example.com", roles.VIEWER).json()
        revoked = _invite(admin, "gone@example.com", roles.VIEWER).json()
    Invitation.objects.filter(id=expired["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoke = _client(admin).delete(f"/v1/invitations/{revoked['id']}", **_as(admin))
    assert revoke.status_code == 200 and revoke.json()["status"] == "revoked"
    assert _accept(_token_from(mail.outbox[0]), password=NEW_PASSWORD).status_code == 409
    assert _accept(_token_from(mail.outbox[1]), password=NEW_PASSWORD).status_code == 409
    assert _accept("not-a-token", password=NEW_PASSWORD).status_code == 404
    assert not User.objects.filter(username__in=["late@example.com", "gone@example.com"]).exists()
    assert _client(admin).get("/v1/invitations", **_as(admin)).json()["results"] == []


def test_inviting_again_replaces_the_pending_invitation(tenant_a, django_capture_on_commit_callbacks):
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        first = _invite(admin, "twice@example.com", roles.VIEWER).json()
        second = _invite(admin, "twice@example.com", roles.DEVELOPER).json()
    assert Invitation.objects.get(id=first["id"]).revoked_at is not None
    assert _accept(_token_from(mail.outbox[0]), password=NEW_PASSWORD).status_code == 409
    assert _accept(_token_from(mail.outbox[1]), password=NEW_PASSWORD).json()["role"] == "developer"
    assert second["status"] == "pending"


def test_an_admin_cannot_invite_an_owner_nor_an_existing_member(tenant_a):
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    member = MembershipFactory(tenant=tenant_a.tenant, role=roles.VIEWER)
    owner_invite = _invite(admin, "boss@example.com", roles.OWNER)
    member_invite = _invite(admin, member.user.email, roles.DEVELOPER)
    assert (owner_invite.status_code, owner_invite.json()["code"]) == (403, "role_not_grantable")
    assert (member_invite.status_code, member_invite.json()["code"]) == (409, "already_member")
    assert not Invitation.objects.filter(tenant=tenant_a.tenant).exists()


def test_provisioning_with_an_owner_email_invites_the_first_owner(client, operator_key,
                                                                   django_capture_on_commit_callbacks):
    # when
    slug = unique_slug("owned")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/v1/platform/tenants", json.dumps({"name": "Owned", "slug": slug,
                                                                   "owner_email": "Founder@Example.com"}),
                               content_type="application/json", **bearer(operator_key))
    # then
    assert response.status_code == 201, response.content
    assert response.json()["owner_invitation"]["email"] == "founder@example.com"
    [message] = mail.outbox
    accepted = _accept(_token_from(message), password=NEW_PASSWORD)
    assert accepted.status_code == 201 and accepted.json()["role"] == "owner"
    invitation = Invitation.objects.get(id=response.json()["owner_invitation"]["id"])
    assert invitation.invited_by.startswith("operator_key:")


def test_the_invitation_page_names_only_its_own_tenant_and_accepts_once(tenant_a, tenant_b,
                                                                       django_capture_on_commit_callbacks):
    # given an invitation to A
    admin = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        _invite(admin, "page@example.com", roles.DEVELOPER)
    token = _token_from(mail.outbox[0])
    browser = Client(enforce_csrf_checks=True)
    # when
    unknown = browser.get("/accounts/invitations/accept/?token=not-a-token")
    page = browser.get(f"/accounts/invitations/accept/?token={token}")
    form = {"token": token, "name": "Page", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD,
            "csrfmiddlewaretoken": page.cookies["csrftoken"].value}
    accepted = browser.post("/accounts/invitations/accept/", form)
    again = browser.post("/accounts/invitations/accept/", form)
    # then: the page shows A's name and nothing of B; the token works once
    assert unknown.status_code == 404 and tenant_a.tenant.name.encode() not in unknown.content
    assert page.status_code == 200 and tenant_a.tenant.name.encode() in page.content
    assert tenant_b.tenant.slug.encode() not in page.content
    assert accepted.status_code == 201
    assert again.status_code == 409
    user = User.objects.get(username="page@example.com")
    assert list(Membership.objects.filter(user=user).values_list("tenant_id", "role")) == \
        [(tenant_a.tenant.id, roles.DEVELOPER)]

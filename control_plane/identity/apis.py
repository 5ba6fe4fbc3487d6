"""Portal users' endpoints: sign-in, the signed-in user, passwords and TOTP (/v1/auth/...), and a tenant's
members and invitations. Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth.models import User
from django.middleware.csrf import get_token
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.pagination import paginated, paginated_response
from common.validation import validated
from control_plane.identity import selectors, services
from control_plane.identity.authentication import IsSignedIn, SignedInUserAuthentication
from control_plane.identity.errors import NotAMember
from control_plane.identity.models import Invitation, Membership
from tenants import roles
from tenants.api_views import TenantApiView
from tenants.authentication import TenantPrincipal


def client_address(request: Request) -> str:
    """The address failed sign-ins are counted against (the peer; a trusted proxy's header is not read here)."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def granter_role(principal: TenantPrincipal) -> str:
    """The role a caller grants with: a user's own role in the tenant; an API key or OAuth client holding
    members:write acts as an admin (it can never make, change or remove owners)."""
    if principal.actor.kind == "user":
        membership = selectors.membership_find(tenant=principal.tenant, user_id=int(principal.actor.id))
        if membership is None:
            raise NotAMember(f"You are no longer a member of tenant {principal.tenant.slug!r}.")
        return membership.role
    return roles.ADMIN


# --- The signed-in user --------------------------------------------------------------------------

class MembershipOfUserSerializer(serializers.Serializer):
    tenant = serializers.SerializerMethodField()
    role = serializers.CharField()
    scopes = serializers.SerializerMethodField()

    def get_tenant(self, membership: Membership) -> dict[str, str]:
        tenant = membership.tenant
        return {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name, "status": tenant.status}

    def get_scopes(self, membership: Membership) -> list[str]:
        return sorted(membership.scopes)


class MeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    name = serializers.CharField()
    totp_enabled = serializers.BooleanField()
    memberships = MembershipOfUserSerializer(many=True)
    csrf_token = serializers.CharField(help_text="Send it as the X-CSRFToken header on unsafe methods.")


def _me(request: Request, user: User) -> dict[str, Any]:
    memberships = selectors.membership_list_for_user(user_id=user.pk)
    return MeOutputSerializer({
        "id": user.pk, "email": user.email, "name": user.first_name,
        "totp_enabled": selectors.user_has_totp(user_id=user.pk), "memberships": memberships,
        "csrf_token": get_token(request._request),
    }).data


class _SignedInApiView(APIView):
    authentication_classes = [SignedInUserAuthentication]
    permission_classes = [IsSignedIn]


class LoginApi(APIView):
    """Sign in with email and password (and the authenticator's code once TOTP is on); sets the session
    cookie. Wrong credentials get one generic answer; repeated failures a 429 with Retry-After."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    class InputSerializer(serializers.Serializer):
        email = serializers.CharField(max_length=254)
        password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})
        totp_code = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")

    @extend_schema(operation_id="auth_login", request=InputSerializer, responses=MeOutputSerializer, tags=["auth"],
                   auth=[])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        user = services.user_sign_in(email=data["email"], password=data["password"], totp_code=data["totp_code"],
                                     address=client_address(request))
        login(request._request, user, backend="django.contrib.auth.backends.ModelBackend")
        return Response(_me(request, user))


class LogoutApi(_SignedInApiView):
    @extend_schema(operation_id="auth_logout", request=None, responses={204: None}, tags=["auth"])
    def post(self, request: Request) -> Response:
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(_SignedInApiView):
    @extend_schema(operation_id="auth_me", responses=MeOutputSerializer, tags=["auth"])
    def get(self, request: Request) -> Response:
        return Response(_me(request, request.user))


class PasswordChangeApi(_SignedInApiView):
    """Change the password; every other session of the user is signed out, this one stays."""

    class InputSerializer(serializers.Serializer):
        current_password = serializers.CharField(max_length=4096, trim_whitespace=False)
        new_password = serializers.CharField(max_length=4096, trim_whitespace=False)

    @extend_schema(operation_id="auth_password_change", request=InputSerializer, responses={204: None},
                   tags=["auth"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        services.user_password_change(user=request.user, address=client_address(request), **data)
        update_session_auth_hash(request._request, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TotpSetupApi(_SignedInApiView):
    """Start two-factor authentication: the secret and its otpauth:// URI (for a QR code), shown once."""

    @extend_schema(operation_id="auth_totp_setup", request=None, tags=["auth"], responses=inline_serializer(
        "TotpSetup", {"secret": serializers.CharField(), "otpauth_uri": serializers.CharField()}))
    def post(self, request: Request) -> Response:
        setup = services.totp_setup(user=request.user)
        return Response({"secret": setup.secret, "otpauth_uri": setup.provisioning_uri})


class _CodeInputSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=32, help_text="The authenticator's 6-digit code (or a recovery code "
                                                         "to disable).")


class TotpConfirmApi(_SignedInApiView):
    """Turn two-factor authentication on with a current code; answers the 10 recovery codes, shown once."""

    @extend_schema(operation_id="auth_totp_confirm", request=_CodeInputSerializer, tags=["auth"],
                   responses=inline_serializer("TotpConfirmed", {
                       "recovery_codes": serializers.ListField(child=serializers.CharField())}))
    def post(self, request: Request) -> Response:
        data = validated(_CodeInputSerializer, request.data)
        return Response({"recovery_codes": services.totp_confirm(user=request.user, code=data["code"])})


class TotpDisableApi(_SignedInApiView):
    @extend_schema(operation_id="auth_totp_disable", request=_CodeInputSerializer, responses={204: None},
                   tags=["auth"])
    def post(self, request: Request) -> Response:
        data = validated(_CodeInputSerializer, request.data)
        services.totp_disable(user=request.user, code=data["code"])
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- A tenant's members --------------------------------------------------------------------------

class MemberOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    user_id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.first_name")
    role = serializers.CharField()
    totp_enabled = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_totp_enabled(self, membership: Membership) -> bool:
        device = getattr(membership.user, "totp_device", None)
        return device is not None and device.is_enabled


class MemberListApi(TenantApiView):
    required_scopes = {"GET": "members:read"}

    @extend_schema(operation_id="members_list", responses=paginated(MemberOutputSerializer), tags=["members"])
    def get(self, request: Request) -> Response:
        members = selectors.membership_list(tenant=request.user.tenant).select_related("user__totp_device")
        return paginated_response(request=request, view=self, queryset=members,
                                  serializer_class=MemberOutputSerializer)


class MemberDetailApi(TenantApiView):
    """Change a member's role or remove them, never beyond the caller's own role (an admin cannot touch
    owners); the last owner stays. An API key with members:write acts as an admin."""

    required_scopes = {"PATCH": "members:write", "DELETE": "members:write"}

    class InputSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=roles.ROLES)

    @extend_schema(operation_id="members_update", request=InputSerializer, responses=MemberOutputSerializer,
                   tags=["members"])
    def patch(self, request: Request, membership_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        membership = services.membership_role_change(
            tenant=request.user.tenant, membership_id=membership_id, role=data["role"], actor=request.user.actor,
            granter_role=granter_role(request.user))
        return Response(MemberOutputSerializer(membership).data)

    @extend_schema(operation_id="members_remove", request=None, responses={204: None}, tags=["members"])
    def delete(self, request: Request, membership_id: UUID) -> Response:
        services.membership_remove(tenant=request.user.tenant, membership_id=membership_id,
                                   actor=request.user.actor, granter_role=granter_role(request.user))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Invitations ---------------------------------------------------------------------------------

class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()
    role = serializers.CharField()
    status = serializers.SerializerMethodField()
    invited_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_status(self, invitation: Invitation) -> str:
        if invitation.accepted_at:
            return "accepted"
        if invitation.revoked_at:
            return "revoked"
        return "expired" if invitation.expires_at <= timezone.now() else "pending"


class InvitationListCreateApi(TenantApiView):
    """Pending invitations; invite someone by email (the link is sent to them, never returned here)."""

    required_scopes = {"GET": "members:read", "POST": "members:write"}

    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=roles.ROLES)

    @extend_schema(operation_id="invitations_list", responses=paginated(InvitationOutputSerializer),
                   tags=["members"])
    def get(self, request: Request) -> Response:
        invitations = selectors.invitation_list_pending(tenant=request.user.tenant)
        return paginated_response(request=request, view=self, queryset=invitations,
                                  serializer_class=InvitationOutputSerializer)

    @extend_schema(operation_id="invitations_create", request=InputSerializer,
                   responses={201: InvitationOutputSerializer}, tags=["members"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        issued = services.invitation_create(tenant=request.user.tenant, actor=request.user.actor,
                                            granter_role=granter_role(request.user), **data)
        return Response(InvitationOutputSerializer(issued.invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailApi(TenantApiView):
    required_scopes = {"DELETE": "members:write"}

    @extend_schema(operation_id="invitations_revoke", request=None, responses=InvitationOutputSerializer,
                   tags=["members"])
    def delete(self, request: Request, invitation_id: UUID) -> Response:
        invitation = services.invitation_revoke(tenant=request.user.tenant, invitation_id=invitation_id,
                                                actor=request.user.actor, granter_role=granter_role(request.user))
        return Response(InvitationOutputSerializer(invitation).data)


class InvitationAcceptApi(APIView):
    """Accept an invitation with its token (from the email). A new account needs a password; an existing
    one is added to the tenant and signs in with its own password."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    class InputSerializer(serializers.Serializer):
        token = serializers.CharField(max_length=200)
        password = serializers.CharField(max_length=4096, required=False, allow_blank=True, default="",
                                         trim_whitespace=False)
        name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")

    @extend_schema(operation_id="invitations_accept", request=InputSerializer, auth=[], tags=["members"],
                   responses={201: inline_serializer("InvitationAccepted", {
                       "tenant": serializers.DictField(), "role": serializers.CharField(),
                       "email": serializers.EmailField(), "user_created": serializers.BooleanField(),
                       "next": serializers.CharField()})})
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        accepted = services.invitation_accept(token=data["token"], password=data["password"] or None,
                                              name=data["name"])
        tenant = accepted.membership.tenant
        return Response({"tenant": {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name},
                         "role": accepted.membership.role, "email": accepted.membership.user.email,
                         "user_created": accepted.user_created,
                         "next": "Sign in with POST /v1/auth/login."}, status=status.HTTP_201_CREATED)

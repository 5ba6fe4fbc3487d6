"""The tenant's OAuth client applications (/v1/oauth/applications). Thin: parse, call one service or
selector, serialize. A secret is in the answer of create and rotate-secret only, never again."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from control_plane.oauth import selectors, services
from control_plane.oauth.models import Application
from tenants.api_views import TenantApiView
from tenants.scopes import ALL_SCOPES

_GRANT_NAMES = {grant: name for name, grant in services.GRANT_TYPES.items()}


class ApplicationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    client_id = serializers.CharField()
    client_type = serializers.CharField()
    grant_type = serializers.SerializerMethodField()
    redirect_uris = serializers.SerializerMethodField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_by = serializers.SerializerMethodField(help_text="Who registered it: <kind>:<id>.")
    created_at = serializers.DateTimeField(source="created")
    updated_at = serializers.DateTimeField(source="updated")

    def get_grant_type(self, application: Application) -> str:
        return _GRANT_NAMES.get(application.authorization_grant_type, application.authorization_grant_type)

    def get_redirect_uris(self, application: Application) -> list[str]:
        return application.redirect_uris.split()

    def get_created_by(self, application: Application) -> str:
        return f"{application.created_by_kind}:{application.created_by_id}"


class IssuedApplicationOutputSerializer(ApplicationOutputSerializer):
    client_secret = serializers.CharField(allow_null=True, help_text="Shown once: store it now, it cannot be read "
                                                                     "again. Null for a public client.")


def _issued(issued: services.IssuedApplication) -> dict:  # type: ignore[type-arg]
    return {**ApplicationOutputSerializer(issued.application).data, "client_secret": issued.client_secret}


class ApplicationListCreateApi(TenantApiView):
    required_scopes = {"GET": "oauth:read", "POST": "oauth:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=255)
        grant_type = serializers.ChoiceField(choices=list(services.GRANT_TYPES),
                                             help_text="client_credentials (a server acting for itself) or "
                                                       "authorization_code (an app acting for a signed-in member, "
                                                       "PKCE with S256 required).")
        client_type = serializers.ChoiceField(choices=[Application.CLIENT_CONFIDENTIAL, Application.CLIENT_PUBLIC],
                                              default=Application.CLIENT_CONFIDENTIAL,
                                              help_text="public for apps that cannot keep a secret (SPA, mobile).")
        redirect_uris = serializers.ListField(child=serializers.URLField(max_length=500), required=False,
                                              default=list, max_length=20)
        scopes = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False,
                                       help_text=f"Any of: {', '.join(ALL_SCOPES)}; at most your own scopes.")

    @extend_schema(operation_id="oauth_applications_list", responses=paginated(ApplicationOutputSerializer),
                   tags=["oauth"])
    def get(self, request: Request) -> Response:
        applications = selectors.application_list(tenant_id=request.user.tenant.pk)
        return paginated_response(request=request, view=self, queryset=applications,
                                  serializer_class=ApplicationOutputSerializer)

    @extend_schema(operation_id="oauth_applications_create", request=InputSerializer,
                   responses={201: IssuedApplicationOutputSerializer}, tags=["oauth"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        issued = services.application_create(tenant=request.user.tenant, actor=request.user.actor,
                                             granting_scopes=request.user.scopes, **data)
        return Response(_issued(issued), status=status.HTTP_201_CREATED)


class ApplicationDetailApi(TenantApiView):
    required_scopes = {"GET": "oauth:read", "DELETE": "oauth:write"}

    @extend_schema(operation_id="oauth_applications_get", responses=ApplicationOutputSerializer, tags=["oauth"])
    def get(self, request: Request, application_id: int) -> Response:
        application = selectors.application_get(tenant_id=request.user.tenant.pk, application_id=application_id)
        return Response(ApplicationOutputSerializer(application).data)

    @extend_schema(operation_id="oauth_applications_delete", responses={204: None}, tags=["oauth"])
    def delete(self, request: Request, application_id: int) -> Response:
        services.application_delete(tenant=request.user.tenant, application_id=application_id,
                                    actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApplicationSecretRotateApi(TenantApiView):
    required_scopes = {"POST": "oauth:write"}

    @extend_schema(operation_id="oauth_applications_rotate_secret", request=None,
                   responses=IssuedApplicationOutputSerializer, tags=["oauth"])
    def post(self, request: Request, application_id: int) -> Response:
        issued = services.application_secret_rotate(tenant=request.user.tenant, application_id=application_id,
                                                    actor=request.user.actor)
        return Response(_issued(issued))

"""The authorization server's own endpoints (not the /v1 API): authorize (with the signed-in portal user),
introspection, the JWKS and the server metadata. Token and revocation are django-oauth-toolkit's views.

Thin: parse, call one service or selector, shape the output. OAuth endpoints answer in OAuth's error format
(RFC 6749 section 5.2), not in problem documents, because OAuth clients expect it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from django.contrib.auth.hashers import check_password
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from oauth2_provider.views import AuthorizationView, OAuthServerMetadataView

from common.http_hardening import page_csp
from control_plane.identity import selectors as identity_selectors
from control_plane.oauth import selectors, services, signing
from control_plane.oauth.models import Application
from tenants.scopes import SCOPES

JWKS_MAX_AGE_SECONDS = 300


@method_decorator([csrf_protect, never_cache], name="dispatch")
class TenantAuthorizationView(AuthorizationView):
    """The consent page of the authorization code flow. Only a member of the client's tenant may authorize,
    and the token can carry at most what the member's role holds (and the client may get)."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        client_id = request.GET.get("client_id", "")
        response = self._refuse_unless_member(client_id) or super().get(request, *args, **kwargs)
        application = selectors.application_get_by_client_id(client_id=client_id)
        if application is not None:
            # the consent form's submission ends at the client's redirect URI: the page policy must allow it
            response["Content-Security-Policy"] = page_csp(form_targets=_origins(application.redirect_uris))
        return response

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refused = self._refuse_unless_member(request.POST.get("client_id", ""))
        return refused or super().post(request, *args, **kwargs)

    def _refuse_unless_member(self, client_id: str) -> HttpResponse | None:
        application = selectors.application_get_by_client_id(client_id=client_id)
        if application is None:
            return None  # DOT answers an unknown client itself (invalid_client, no redirect)
        held = identity_selectors.member_scopes(user_id=self.request.user.pk, tenant_id=application.tenant_id)
        if held is None:
            return self._error(application, "access_denied",
                               f"You are not a member of the tenant that registered {application.name!r}; ask one "
                               "of its owners or admins to invite you.")
        self._held = [scope for scope in application.scopes if scope in held]
        if not self._held:
            return self._error(application, "access_denied",
                               f"Your role grants none of the scopes {application.name!r} may get.")
        return None

    def _error(self, application: Application, code: str, description: str) -> HttpResponse:
        return self.render_to_response({"error": {"error": code, "description": description},
                                        "application": application}, status=403)

    def _narrowed(self, scopes: list[str]) -> list[str]:
        return [scope for scope in scopes if scope in self._held]

    def get_initial(self) -> dict[str, Any]:
        initial = super().get_initial()
        initial["scope"] = " ".join(self._narrowed(initial["scope"].split()))
        return initial

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        if "scopes" in kwargs:
            kwargs["scopes"] = self._narrowed(kwargs["scopes"])
            kwargs["scopes_descriptions"] = [f"{scope}: {SCOPES[scope]}" for scope in kwargs["scopes"]]
        return super().get_context_data(**kwargs)


def _origins(redirect_uris: str) -> tuple[str, ...]:
    """The distinct origins (scheme://host[:port]) of an application's space-separated redirect URIs."""
    origins = []
    for uri in redirect_uris.split():
        parts = urlsplit(uri)
        origin = f"{parts.scheme}://{parts.netloc}"
        if parts.scheme and parts.netloc and origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _client_credentials(request: HttpRequest) -> tuple[str, str] | None:
    """client_id and secret from HTTP Basic (preferred) or the form body (RFC 6749 section 2.3.1)."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote_plus(client_id), unquote_plus(secret)
    if request.POST.get("client_id") and request.POST.get("client_secret"):
        return request.POST["client_id"], request.POST["client_secret"]
    return None


@method_decorator(csrf_exempt, name="dispatch")
class IntrospectView(View):
    """RFC 7662 introspection for confidential clients, of their own access tokens only: any other token (of
    another client, revoked, expired, or not ours) is ``{"active": false}``, and nothing more is said."""

    def post(self, request: HttpRequest) -> JsonResponse:
        credentials = _client_credentials(request)
        application = selectors.application_get_by_client_id(client_id=credentials[0]) if credentials else None
        if application is None or application.client_type != Application.CLIENT_CONFIDENTIAL \
                or not check_password(credentials[1], application.client_secret):
            response = JsonResponse({"error": "invalid_client",
                                     "error_description": "Authenticate the client with HTTP Basic."}, status=401)
            response["WWW-Authenticate"] = 'Basic realm="agentplane-oauth"'
            return response
        token = request.POST.get("token", "")
        if not token:
            return JsonResponse({"error": "invalid_request", "error_description": "Send the token to introspect "
                                 "as the form field 'token'."}, status=400)
        return JsonResponse(services.access_token_introspect(raw=token, application_id=application.pk),
                            headers={"Cache-Control": "no-store"})


class JwksView(View):
    """The public keys that verify our access tokens (RFC 7517). A verifier that meets an unknown kid should
    fetch this again: a key rotated in signs at once."""

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(signing.jwks(), headers={
            "Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}", "Access-Control-Allow-Origin": "*"})


class ServerMetadataView(OAuthServerMetadataView):
    """RFC 8414 metadata, with our JWKS (DOT publishes one only with OpenID Connect)."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        data = json.loads(super().get(request, *args, **kwargs).content)
        data["jwks_uri"] = self._get_endpoint_url(request, "jwks", required=True)
        data["introspection_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]
        return JsonResponse(data, headers={"Access-Control-Allow-Origin": "*",
                                           "Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"})

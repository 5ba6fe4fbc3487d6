"""ASGI entry point served by Daphne: HTTP through Django, websockets through Channels."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from common.http_hardening import BodySizeLimitMiddleware, SecurityHeadersMiddleware  # noqa: E402
from control_plane.hardening import body_limits, security_header_settings  # noqa: E402
from data_plane.mcp_server import PATH as MCP_PATH, McpEndpoint  # noqa: E402
from data_plane.routing import websocket_urlpatterns  # noqa: E402
from tenants.asgi import ApiKeyAuthMiddleware  # noqa: E402

from guardrails.services import guardrails_warm_up_in_background  # noqa: E402

mcp_endpoint = McpEndpoint()
guardrails_warm_up_in_background()  # the API's first run start checks its input with the classifier


async def http(scope, receive, send):  # type: ignore[no-untyped-def]
    """The platform's MCP server at /v1/mcp (the SDK's app); everything else is Django."""
    if scope["path"] == MCP_PATH or scope["path"].startswith(MCP_PATH + "/"):
        return await mcp_endpoint(scope, receive, send)
    return await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter({
    # body limits and security headers on every HTTP response, Django's and the MCP endpoint's
    "http": SecurityHeadersMiddleware(BodySizeLimitMiddleware(http, limits=body_limits()),
                                      settings=security_header_settings()),
    "websocket": AllowedHostsOriginValidator(ApiKeyAuthMiddleware(URLRouter(websocket_urlpatterns))),
})

"""ASGI entry point served by Daphne: HTTP through Django, websockets through Channels."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from data_plane.routing import websocket_urlpatterns  # noqa: E402
from tenants.asgi import ApiKeyAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(ApiKeyAuthMiddleware(URLRouter(websocket_urlpatterns))),
})

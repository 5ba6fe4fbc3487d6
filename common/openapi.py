"""OpenAPI schema generation tweaks."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    """Names a view's nested serializer after the view: ``ApiKeyListCreateApi.InputSerializer`` becomes
    ``ApiKeyListCreateInput``, so the house style's nested ``InputSerializer``s never collide."""

    def get_serializer_name(self, serializer: Any, direction: str) -> str:
        serializer_class = serializer if isinstance(serializer, type) else type(serializer)
        owner, _, own_name = serializer_class.__qualname__.rpartition(".")
        if owner and "<locals>" not in owner:
            return owner.split(".")[-1].removesuffix("Api") + own_name
        return super().get_serializer_name(serializer, direction)

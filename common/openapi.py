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


PROBLEM_MEDIA_TYPE = "application/problem+json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem document: every error the API returns has this shape.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string", "description": "The HTTP status phrase, or a short summary."},
        "status": {"type": "integer", "description": "The HTTP status code, repeated."},
        "detail": {"type": "string", "description": "What happened and what to do next."},
        "code": {"type": "string", "description": "A stable snake_case code to branch on."},
        "errors": {"description": "For invalid input: the messages per field."},
    },
    "additionalProperties": True,
}

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}


def document_problem_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOK: every operation documents the problem documents it can answer.

    400 when it takes input, 401 and 403 when it takes a credential, 404 when its path names something, and
    a 4XX range for the rest (409 wrong state, 413 too large, 415, 422 refused by a guardrail, 429 quota), so
    a client (and the API fuzzer, tests/test_api_fuzz.py) knows that errors are problem documents.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            parameters = operation.get("parameters", [])
            errors: dict[str, str] = {}
            if "requestBody" in operation or parameters:
                errors["400"] = "Invalid input: `errors` names each field to fix."
            if operation.get("security"):
                errors["401"] = "No credential, or one that is unknown, expired or revoked."
                errors["403"] = "The credential lacks the scope this needs, or its tenant is suspended."
            for parameter in parameters:
                schema = parameter.get("schema", {})
                if parameter.get("in") == "path" and schema.get("type") == "integer":
                    # Django's <int:...> converter matches digits only: a negative id is no route at all
                    schema.setdefault("minimum", 0)
            if any(parameter.get("in") == "path" for parameter in parameters):
                errors["404"] = "Nothing of the caller's at this path (another tenant's ids are not found either)."
            errors["4XX"] = ("Any other refusal, as a problem document: 409 wrong state, 413 too large, "
                             "415 unsupported media type, 422 refused by a guardrail, 429 quota.")
            for status, description in errors.items():
                responses.setdefault(status, _problem_response(description))
    return result

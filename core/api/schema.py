"""OpenAPI: descriptions shared by the apps' operations, and post-processing so every operation documents the error
statuses the API really answers with."""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object",
    "description": "`detail` for a request-wide error, or {field: [messages]} for invalid fields.",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": True,
}

# The 503 of an operation that creates or restarts a job (core.api.exceptions.broker_unavailable_response).
BROKER_DOWN = (
    "The task queue is unreachable: the job is saved and queued and starts by itself once the broker is back. "
    "Body: {detail, job, id, status}."
)

# Statuses any operation can answer, whatever its own documented successes.
COMMON_ERRORS = {
    "400": "Invalid request: {field: [messages]} naming each bad field or query parameter, or `detail`.",
    "401": "No or invalid credentials (`Authorization: Token <key>` or a session).",
    "403": "Authenticated, but this role may not do this (or the item is not yours).",
    "404": "No such object, page or URL.",
    "413": "Request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE.",
    "415": "Unsupported Content-Type.",
    "429": "Too many requests or failed sign-ins; retry after `Retry-After` seconds.",
    "503": "The database is unreachable for a moment; nothing was changed, retry after `Retry-After` seconds.",
}


def add_common_error_responses(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOK: add COMMON_ERRORS (with an `Error` body) to every API operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code, description in COMMON_ERRORS.items():
                response = responses.setdefault(code, {"description": description})
                response.setdefault("content", {"application/json": {"schema": reference}})
    return result

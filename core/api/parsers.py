"""A JSON parser that rejects, with the offending field's path, what the database or Python cannot take.

Postgres text cannot hold NUL (\\u0000), UTF-8 cannot encode a lone surrogate (\\ud800), and deeply nested
documents exhaust Python's recursion limit in every later step (validation, serialisation, JSONField storage).
Rejected here, each becomes a 400 naming the field instead of a 500 deep inside the ORM.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from core.request_guard import unstorable_text_problem


class JsonRejected(ValueError):
    pass


def _field_path(parts: list) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(body)"


def check_json_document(document, *, max_depth: int) -> None:
    """Raise JsonRejected naming the first key or value path that is too deep, has NUL or a lone surrogate."""
    stack = [(document, [], 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            problem = unstorable_text_problem(value)
            if problem:
                raise JsonRejected(f"`{_field_path(path)}` {problem}.")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > max_depth:
            raise JsonRejected(f"`{_field_path(path)}` is nested more than {max_depth} levels deep.")
        if isinstance(value, dict):
            for key, item in value.items():
                problem = unstorable_text_problem(key)
                if problem:
                    raise JsonRejected(f"A key in `{_field_path(path)}` {problem}.")
                stack.append((item, [*path, key], depth + 1))
        else:
            stack.extend((item, [*path, index], depth + 1) for index, item in enumerate(value))


class StrictJSONParser(JSONParser):
    """DRF's JSON parser plus check_json_document (API_JSON_MAX_DEPTH levels at most)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(self._too_deep()) from exc
        try:
            check_json_document(document, max_depth=settings.API_JSON_MAX_DEPTH)
        except JsonRejected as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        return document

    @staticmethod
    def _too_deep() -> str:
        return f"JSON parse error - the body is nested more than {settings.API_JSON_MAX_DEPTH} levels deep."


def _check_form_fields(data) -> None:
    for name, values in data.lists():
        for value in [name, *values]:
            problem = unstorable_text_problem(value) if isinstance(value, str) else None
            if problem:
                raise ParseError({name: [f"`{name}` {problem}."]})


class StrictFormParser(FormParser):
    """Form bodies: a field with NUL (or a lone surrogate) is a 400 naming it."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _check_form_fields(data)
        return data


class StrictMultiPartParser(MultiPartParser):
    """Multipart bodies: the form fields are checked as StrictFormParser does; uploaded files by their importer."""

    def parse(self, stream, media_type=None, parser_context=None):
        result = super().parse(stream, media_type, parser_context)
        _check_form_fields(result.data)
        return result

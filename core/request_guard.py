"""Rejects, with a 400 naming the parameter, URLs the database cannot take: NUL in the path or query string.

Postgres text cannot hold NUL, so `?project=%00` or `/projects/%00/` would otherwise surface as a DataError (500)
from whichever lookup first uses the value. Request bodies are checked by their parsers (core.api.parsers).
"""

from __future__ import annotations

import re

from django.http import HttpResponse, JsonResponse
from django.views import defaults

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as UTF-8 text in Postgres, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL (\\u0000) character"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode text"


def url_problem(request) -> tuple[str, str] | None:
    """(field, problem) for the first unstorable URL part, or None."""
    problem = unstorable_text_problem(request.path)
    if problem:
        return "path", f"The URL path {problem}."
    for name, values in request.GET.lists():
        for value in [name, *values]:
            problem = unstorable_text_problem(value)
            if problem:
                return name, f"Query parameter `{name}` {problem}."
    return None


class RequestGuardMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        found = url_problem(request)
        if found is None:
            return self.get_response(request)
        field, message = found
        if request.path.startswith("/api/"):
            return JsonResponse({field: [message]}, status=400)
        return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")


def not_found(request, exception=None):
    """handler404: the API answers JSON like its other errors; the browser gets Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)

"""While the database is unreachable every request gets a 503 with Retry-After, not a generic HTML 500.

Nothing is lost: a request that cannot reach the database has written nothing (each write is one transaction),
so telling the client to retry is the whole truth. The API answers JSON, the browser a short page; neither touches
the database, the session or a template context processor that might.
"""

from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.views import defaults

logger = logging.getLogger(__name__)

_PAGE = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Back in a moment</title></head>"
    "<body><h1>Back in a moment</h1><p>The database is not reachable right now. Nothing you sent was lost or "
    "half-saved; please retry in {seconds} seconds.</p></body></html>"
)


def is_database_outage(exc: BaseException | None) -> bool:
    """OperationalError / InterfaceError: the connection, not the query, failed (no server, restart, network)."""
    while exc is not None:
        if isinstance(exc, OperationalError | InterfaceError):
            return True
        if isinstance(exc, DatabaseError):
            return False
        exc = exc.__cause__ or exc.__context__
    return False


def outage_response(request) -> HttpResponse:
    seconds = settings.OUTAGE_RETRY_AFTER_S
    if request.path.startswith("/api/"):
        response = JsonResponse(
            {"detail": f"The database is unreachable; nothing was changed. Retry in {seconds} seconds."},
            status=503,
        )
    else:
        response = HttpResponse(_PAGE.format(seconds=seconds), status=503)
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseOutageMiddleware:
    """Turns a lost database connection raised by a view into outage_response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not is_database_outage(exception):
            return None
        logger.warning("Database unreachable on %s %s: %s", request.method, request.path, exception)
        return outage_response(request)


def server_error(request, template_name=defaults.ERROR_500_TEMPLATE_NAME):
    """handler500: a database outage raised outside a view (a middleware, a session save) is a 503 as well."""
    if is_database_outage(sys.exc_info()[1]):
        return outage_response(request)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Server error."}, status=500)
    return defaults.server_error(request, template_name)

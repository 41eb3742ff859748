"""The annotator loop's two API calls, `POST /api/v1/rankings/next/` and `/submit/`, answered without DRF's request
machinery when the request is the plain case: a token in `Authorization`, a JSON object body, a JSON response.

DRF's dispatch (request wrapper, content negotiation, parsers, authenticators, permission objects, serializer
fields, renderer) cost more CPU than the lease or the submission itself. This path does the same checks with the
same functions where they exist (the token query, the strict JSON checks, the services, the exception handler,
the JSON renderer) and gives the same status, body and headers; tests compare the two answer for answer. Anything
else, including every request DRF would refuse before the view runs (no or a bad token, a role that may not, a body
its serializers would reject or change), returns None here and goes through DRF unchanged, so its answers need no
copy: being refused costs that request the token query twice, which only wrong requests pay.
"""

from __future__ import annotations

import json
import re

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import InterfaceError, OperationalError, connection
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.json import strict_constant

from core.api.exceptions import exception_handler
from core.api.parsers import JsonRejected, check_json_document
from core.api.permissions import IsAnnotator
from core.selectors import user_roles, user_with_roles_for_token
from labeling.api.serializers import assignment_data, ranking_data
from labeling.selectors.annotation import assignment_responses
from labeling.services.leasing import assignment_lease_next, project_with_current_lease
from labeling.services.rankings import ranking_submit

# DRF's SlugField pattern (its CharField would first strip whitespace: such values go through DRF).
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
_ACCEPTS_JSON = {"", "*/*", "application/json"}
_MAX_ID = 2**63 - 1  # bigint
_RENDERER = JSONRenderer()
# What DRF's view adds to each of its answers (RankingViewSet's allowed methods; more than one renderer).
_VIEW_HEADERS = {"Allow": "POST, OPTIONS", "Vary": "Accept"}


def answer(request: HttpRequest, action: str | None, view) -> HttpResponse | None:
    """The answer to a plain `next` / `submit` request, or None: let DRF answer it."""
    if action not in _ACTIONS or request.method != "POST" or request.GET:
        return None
    return _without_health_check(lambda: _answer(request, action, view))


def _answer(request: HttpRequest, action: str, view) -> HttpResponse | None:
    user = _token_user(request)
    if user is None:
        return None
    body = _json_object(request)
    if body is None:
        return None
    handle, arguments = _ACTIONS[action]
    values = arguments(body)
    if values is None:
        return None
    request.user = (
        user  # as DRF sets it: the middleware marks answers to a signed-in user `private, no-store`
    )
    try:
        data, status = handle(user, **values)
    except (ValidationError, PermissionDenied, Http404, APIException) as exc:
        error = exception_handler(exc, {"view": view, "args": (), "kwargs": {}, "request": request})
        data, status = error.data, error.status_code
    return _respond(data, status)


def _without_health_check(run):
    """run() without the `SELECT 1` that CONN_HEALTH_CHECKS sends before a request's first statement on a
    persistent connection (a round trip per request). A connection found dead instead by that first statement
    (Postgres restarted, the connection was cut) is replaced and run() called once more. That is safe because a
    failed first statement has done nothing: in both answers it is a read (the token, the project) or runs
    inside a transaction that it never got to commit."""
    if (
        not connection.health_check_enabled
        or connection.health_check_done
        or connection.connection is None
        or connection.in_atomic_block
    ):
        return run()
    connection.health_check_done = True
    executed = False

    def note(execute, sql, params, many, context):
        nonlocal executed
        result = execute(sql, params, many, context)
        executed = True
        return result

    try:
        with connection.execute_wrapper(note):
            answered = run()
    except (OperationalError, InterfaceError):
        if executed or connection.in_atomic_block:
            raise
        connection.close()
        return run()
    if answered is None and not executed:
        connection.health_check_done = False  # DRF answers this one (a remembered token): with Django's check
    return answered


def _token_user(request: HttpRequest):
    """The active user of `Authorization: Token <key>` when their role may annotate, else None."""
    parts = request.headers.get("Authorization", "").split()
    if len(parts) != 2 or parts[0].lower() != "token" or not parts[1].isascii():
        return None
    found = user_with_roles_for_token(key=parts[1])
    if found is None or not found[0].is_active:
        return None
    user = found[0]
    return user if user_roles(user=user) & IsAnnotator.roles else None


def _json_object(request: HttpRequest) -> dict | None:
    """The body as StrictJSONParser would parse it, when it is a JSON object and nothing about it is refused."""
    if request.content_type != "application/json" or request.content_params not in ({}, {"charset": "utf-8"}):
        return None
    if request.headers.get("Accept", "") not in _ACCEPTS_JSON:
        return None
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and int(request.META.get("CONTENT_LENGTH") or 0) > limit:
        return None
    try:
        document = json.loads(request.body.decode("utf-8"), parse_constant=strict_constant)
        check_json_document(document, max_depth=settings.API_JSON_MAX_DEPTH)
    except (ValueError, RecursionError, JsonRejected):
        return None
    return document if isinstance(document, dict) else None


def _plain_text(value) -> bool:
    """A string DRF's CharField keeps as it is (it strips whitespace)."""
    return isinstance(value, str) and value == value.strip()


def _next_arguments(body: dict) -> dict | None:
    slug = body.get("project")
    return {"slug": slug} if isinstance(slug, str) and _SLUG.fullmatch(slug) else None


def _submit_arguments(body: dict) -> dict | None:
    """SubmitSerializer's validated data, when its fields would take the body unchanged."""
    assignment = body.get("assignment")
    if type(assignment) is not int or not 0 < assignment <= _MAX_ID:
        return None
    choice = body.get("choice")
    ranks = body.get("ranks")
    flags = body.get("flags", [])
    rationale = body.get("rationale", "")
    if choice is not None and not _plain_text(choice):
        return None
    if ranks is not None and not (isinstance(ranks, dict) and None not in ranks.values()):
        return None
    if not isinstance(flags, list) or not all(_plain_text(flag) and flag for flag in flags):
        return None
    if not _plain_text(rationale):
        return None
    return {
        "assignment_id": assignment,
        "choice": choice or None,
        "ranks": ranks,
        "flags": flags,
        "rationale": rationale,
    }


def _next(user, *, slug: str) -> tuple[dict | None, int]:
    """RankingViewSet.next."""
    now = timezone.now()
    project, current_lease_id = project_with_current_lease(slug=slug, annotator_id=user.pk, now=now)
    if project is None:
        raise Http404("No such project.")
    assignment = assignment_lease_next(
        project=project, annotator=user, now=now, current_lease_id=current_lease_id
    )
    if assignment is None:
        return None, 204
    return assignment_data(assignment, assignment_responses(assignment=assignment)), 200


def _submit(user, **values) -> tuple[dict, int]:
    """RankingViewSet.submit."""
    return ranking_data(ranking_submit(annotator=user, **values)), 201


_ACTIONS = {"next": (_next, _next_arguments), "submit": (_submit, _submit_arguments)}


def _respond(data, status: int) -> HttpResponse:
    """The response DRF's JSON renderer and view would make of `data`."""
    content = _RENDERER.render(data)
    response = HttpResponse(content, status=status, content_type="application/json")
    if not content:
        del response["Content-Type"]
    for name, value in _VIEW_HEADERS.items():
        response[name] = value
    return response

"""A shorter middleware stack for a few token-authenticated API endpoints (settings.FAST_LANE_URL_NAMES: the
annotator loop's `next` and `submit`, issue #17).

Every request ran the whole MIDDLEWARE list and Django's URL resolution, about a quarter of the Python time of an
annotator round trip. Most of that list serves browsers: static files, the session, CSRF, the session user,
messages, htmx. A request that authenticates with `Authorization: Token …` uses none of them: DRF's
TokenAuthentication answers it (or refuses it) before SessionAuthentication would look at the session, and the
DRF views are exempt from CSRF. FastLaneMiddleware, first in MIDDLEWARE, sends such a request to its endpoint
through the other middleware only (MIDDLEWARE without FAST_LANE_SKIPS, in the same order), so every response
header, the host check, the outage and error handling come from the same code as before. The view, the
exception, view and template-response middleware hooks are Django's own (BaseHandler._get_response); only the URL
lookup is done once at start, not per request. tests/labeling/test_hot_path.py holds both stacks to the same
answers, header for header.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.urls import resolve, reverse
from django.utils.module_loading import import_string

_THIS = f"{__name__}.FastLaneMiddleware"


class _Lane(BaseHandler):
    """The middleware of MIDDLEWARE that the lane keeps, around Django's own view call, for known URLs."""

    def __init__(self, middleware_paths: list[str], url_names: list[str]):
        super().__init__()
        self.matches = {}
        for name in url_names:
            path = reverse(name)
            self.matches[path] = resolve(path)
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        handler = convert_exception_to_response(self._get_response)
        # As BaseHandler.load_middleware builds the stack (synchronous only: the lane serves WSGI).
        for middleware_path in reversed(middleware_paths):
            middleware = import_string(middleware_path)
            if not getattr(middleware, "sync_capable", True):
                raise ImproperlyConfigured(
                    f"{middleware_path} cannot run synchronously: keep it off the lane"
                )
            try:
                instance = middleware(handler)
            except MiddlewareNotUsed:
                continue
            if hasattr(instance, "process_view"):
                self._view_middleware.insert(0, instance.process_view)
            if hasattr(instance, "process_template_response"):
                self._template_response_middleware.append(instance.process_template_response)
            if hasattr(instance, "process_exception"):
                self._exception_middleware.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler

    def resolve_request(self, request):
        match = self.matches[request.path_info]
        request.resolver_match = match
        return match


class FastLaneMiddleware:
    """Sends `POST` requests with a token to a FAST_LANE_URL_NAMES endpoint through the shorter stack."""

    def __init__(self, get_response):
        if settings.MIDDLEWARE[0] != _THIS:
            raise ImproperlyConfigured(f"{_THIS} must come first in MIDDLEWARE: the lane starts from the top")
        unknown = set(settings.FAST_LANE_SKIPS) - set(settings.MIDDLEWARE)
        if unknown:
            raise ImproperlyConfigured(
                f"FAST_LANE_SKIPS names middleware not in MIDDLEWARE: {sorted(unknown)}"
            )
        self.get_response = get_response
        self._lane: _Lane | None = None

    def _built(self) -> _Lane:
        # Built at the first request, not at start: reverse() and resolve() import the URLconf.
        if self._lane is None:
            kept = [path for path in settings.MIDDLEWARE[1:] if path not in settings.FAST_LANE_SKIPS]
            self._lane = _Lane(kept, settings.FAST_LANE_URL_NAMES)
        return self._lane

    def __call__(self, request):
        if (
            request.method == "POST"
            and request.META.get("HTTP_AUTHORIZATION", "")[:6].lower() == "token "
            and request.path_info in self._built().matches
        ):
            return self._lane._middleware_chain(request)
        return self.get_response(request)

"""Response headers every page gets: a Content-Security-Policy, and no caching of what a signed-in user sees."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control


def content_security_policy() -> str:
    """settings.CONTENT_SECURITY_POLICY (a dict of directive -> sources) as a header value."""
    return "; ".join(
        f"{directive} {' '.join(sources)}".strip()
        for directive, sources in settings.CONTENT_SECURITY_POLICY.items()
    )


class SecurityHeadersMiddleware:
    """Sets Content-Security-Policy on every response that has none, and marks responses to signed-in users
    `Cache-Control: private, no-store` so that neither a shared proxy nor the browser's back button shows one
    user's rankings, runs or API data to someone else.

    The user is read after the view ran: DRF authenticates API tokens inside the view and then sets request.user.
    Static files never get here (WhiteNoise answers them first) and keep their long cache lifetime.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.policy = content_security_policy()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            patch_cache_control(response, private=True, no_store=True)
        return response

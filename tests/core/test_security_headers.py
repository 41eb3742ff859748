"""Content-Security-Policy on every page, and no caching of what a signed-in user sees."""

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from core.services import user_create_or_update
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db


def _cache_control(response) -> set[str]:
    return {part.strip() for part in response.headers.get("Cache-Control", "").split(",") if part.strip()}


def test_every_page_has_a_policy_without_inline_script_or_style(client):
    for url in ("/accounts/login/", "/api/docs/", "/healthz", "/django-admin/login/"):
        policy = client.get(url).headers["Content-Security-Policy"]
        directives = dict(item.strip().split(" ", 1) for item in policy.split(";"))
        assert directives["script-src"] == "'self'", url
        assert directives["style-src"] == "'self'", url
        assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'", url


def test_swagger_ui_page_has_no_inline_script_or_style(client):
    page = client.get("/api/docs/").content.decode()
    assert "<style" not in page
    assert "<script>" not in page  # every script has a src; the init script is /api/docs/?script=
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle(" in script.content


def test_base_template_turns_off_htmx_inline_indicator_styles(client):
    page = client.get("/accounts/login/").content.decode()
    assert """<meta name="htmx-config" content='{"includeIndicatorStyles": false}'>""" in page


def test_annotator_page_keeps_its_422_swap_in_the_one_htmx_config(client):
    """htmx reads only the first htmx-config meta: the annotator page's keys must be in base.html's."""
    import json
    import re

    make_comparison(make_project("csp"))
    client.force_login(make_user("csp-annotator"))
    page = client.get("/annotate/csp/").content.decode()
    metas = re.findall(r"<meta name=\"htmx-config\" content='([^']*)'>", page)
    assert len(metas) == 1
    config = json.loads(metas[0])
    assert config["includeIndicatorStyles"] is False
    assert {"code": "422", "swap": True, "error": False} in config["responseHandling"]


def test_signed_in_pages_are_private_and_not_stored(client):
    client.force_login(User.objects.create_user("reader", password="reader-pass-123"))
    page = client.get("/")
    assert page.status_code == 200
    assert {"private", "no-store"} <= _cache_control(page)


def test_token_authenticated_api_responses_are_private_and_not_stored(client):
    user, _ = user_create_or_update(
        username="api-user", role="researcher", password="api-pass-123", validate=False
    )
    token = Token.objects.create(user=user)
    response = client.get("/api/v1/projects/", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    assert {"private", "no-store"} <= _cache_control(response)
    assert "no-store" not in _cache_control(client.get("/api/schema/"))

"""Users of every role with API tokens, and a project with data behind every endpoint."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from core.services import api_token_get_or_create
from tests.labeling.factories import make_user


@pytest.fixture
def users(db):
    return {
        "annotator": make_user("api-ann"),
        "researcher": make_user("api-res", role="researcher"),
        "admin": make_user("api-admin", role="admin"),
    }


@pytest.fixture
def clients(users):
    """An APIClient per role, authenticated with `Authorization: Token <key>` (anonymous: none)."""
    result = {"anonymous": APIClient()}
    for role, user in users.items():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_get_or_create(user=user).key}")
        result[role] = client
    return result

"""Annotators never learn which items are gold: not from the API, not from the annotate page."""

from __future__ import annotations

import pytest

from labeling.models import Comparison
from tests.labeling.factories import make_comparison, make_project

pytestmark = pytest.mark.django_db


def test_leasing_through_the_api_does_not_reveal_gold(clients):
    project = make_project("calib", gold_ratio=1.0)
    make_comparison(project, is_gold=True)
    response = clients["annotator"].post("/api/v1/rankings/next/", {"project": "calib"}, format="json")
    assert response.status_code == 200
    assert Comparison.objects.get(pk=response.json()["comparison"]).is_gold
    assert "gold" not in response.content.decode().lower()


def test_the_annotate_page_does_not_reveal_gold(client, users):
    project = make_project("calib", gold_ratio=1.0)
    make_comparison(project, is_gold=True)
    client.force_login(users["annotator"])
    page = client.get("/annotate/calib/")
    assert page.status_code == 200 and b"Answer 0" in page.content
    assert b"gold" not in page.content.lower()


def test_researchers_still_see_gold_on_comparisons(clients):
    project = make_project("calib", gold_ratio=1.0)
    make_comparison(project, is_gold=True)
    assert clients["researcher"].get("/api/v1/comparisons/").json()["results"][0]["is_gold"] is True

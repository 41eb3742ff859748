"""Bad input is a 400 (or 413) naming what is wrong, never a 500: NUL, lone surrogates, deep JSON, odd dates."""

from __future__ import annotations

import json

import pytest

from exports.models import Export
from labeling.models import Ranking
from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from tests.labeling.factories import make_comparison, make_project

pytestmark = pytest.mark.django_db


def _post_json(client, url, body: str | bytes):
    return client.post(url, data=body, content_type="application/json")


def test_nul_in_a_json_field_names_the_field(clients):
    make_project("p")
    response = _post_json(clients["researcher"], "/api/v1/exports/", json.dumps({"project": "p\x00"}))
    assert response.status_code == 400
    assert "`project` contains a NUL" in response.json()["detail"]
    nested = {"project": "p", "filters": {"date_from": "2024\x00"}}
    response = _post_json(clients["researcher"], "/api/v1/exports/", json.dumps(nested))
    assert response.status_code == 400 and "`filters.date_from` contains a NUL" in response.json()["detail"]
    assert not Export.objects.exists()


def test_nul_in_a_form_or_multipart_field_names_the_field(clients):
    make_project("p")
    for content in ("multipart", "form"):
        if content == "multipart":
            response = clients["admin"].post("/api/v1/training-runs/", {"project": "p\x00", "preset": "sft"})
        else:
            response = clients["admin"].post(
                "/api/v1/training-runs/",
                "project=p%00&preset=sft",
                content_type="application/x-www-form-urlencoded",
            )
        assert response.status_code == 400, content
        assert response.json() == {"project": ["`project` contains a NUL (\\u0000) character."]}


def test_lone_surrogate_in_json_is_rejected(clients):
    make_project("p")
    response = _post_json(clients["admin"], "/api/v1/rankings/next/", '{"project": "p\\ud800"}')
    assert response.status_code == 400
    assert "`project` contains a lone surrogate (\\ud800)" in response.json()["detail"]
    response = _post_json(clients["admin"], "/api/v1/exports/", '{"project": "p", "\\udfff": 1}')
    assert (
        response.status_code == 400
        and "A key in `(body)` contains a lone surrogate" in response.json()["detail"]
    )


@pytest.mark.parametrize("depth", [65, 2_000, 50_000])
def test_deeply_nested_json_is_a_400(clients, depth):
    make_project("p")
    body = '{"project": "p", "filters": ' + "[" * depth + "]" * depth + "}"
    response = _post_json(clients["researcher"], "/api/v1/exports/", body)
    assert response.status_code == 400
    assert "nested more than 64 levels deep" in response.json()["detail"]


def test_json_at_the_depth_limit_still_parses(clients):
    make_project("p")
    body = json.dumps({"project": "p", "filters": {"exclude_flagged": True}})
    assert _post_json(clients["researcher"], "/api/v1/exports/", body).status_code == 202


def test_nul_in_query_string_and_path_names_the_parameter(clients, client, admin_user):
    response = clients["researcher"].get("/api/v1/prompts/", {"project": "p\x00"})
    assert response.status_code == 400
    assert response.json() == {"project": ["Query parameter `project` contains a NUL (\\u0000) character."]}
    assert clients["researcher"].get("/api/v1/projects/p%00/").status_code == 400
    client.force_login(admin_user)
    page = client.get("/models/1/files/weights%00.bin")
    assert page.status_code == 400 and b"URL path contains a NUL" in page.content


@pytest.mark.parametrize("role", ["annotator", "researcher", "admin"])
def test_rankings_date_filter_with_an_impossible_offset_is_a_400(clients, role):
    response = clients[role].get("/api/v1/rankings/", {"created_after": "0617-04-17T13:11:36-19:55"})
    assert response.status_code == 400
    assert response.json() == {"created_after": ["The UTC offset must be between -14:00 and +14:00."]}
    overflow = clients[role].get("/api/v1/rankings/", {"created_before": "9999-12-31T23:59:59-13:00"})
    assert overflow.status_code == 400 and overflow.json() == {
        "created_before": ["The date is out of range."]
    }


def test_rankings_date_filter_converts_offsets(clients, annotator_ranking):
    after = clients["researcher"].get("/api/v1/rankings/", {"created_after": "2000-01-01T10:00:00+13:30"})
    assert after.status_code == 200 and after.json()["count"] == 1


@pytest.fixture
def annotator_ranking(users):
    project = make_project("dated")
    make_comparison(project)
    assignment = assignment_lease_next(project=project, annotator=users["annotator"])
    ranking_submit(assignment_id=assignment.pk, annotator=users["annotator"], choice="a")
    return Ranking.objects.get()


def test_a_body_over_the_upload_limit_is_a_json_413(clients, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
    body = json.dumps({"project": "p", "padding": "x" * (12 * 1024 * 1024)})
    response = _post_json(clients["researcher"], "/api/v1/exports/", body)
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert "larger than 10485760 bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)" in response.json()["detail"]

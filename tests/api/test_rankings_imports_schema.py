"""API ranking submission = the UI's validation, word for word; bulk import = the CLI's; the schema validates."""

from __future__ import annotations

import html

import pytest
from django.urls import reverse

from labeling.models import Assignment, Prompt, Ranking
from labeling.services.leasing import assignment_lease_next
from tests.labeling.factories import make_comparison, make_project

pytestmark = pytest.mark.django_db


def test_api_submission_errors_are_the_uis(client, clients, users):
    project = make_project("parity", mode="ranking", k=3, allow_ties=False, overlap=1)
    comparison = make_comparison(project, k=3)
    annotator = users["annotator"]
    assignment = assignment_lease_next(project=project, annotator=annotator)
    a, b, c = (str(rid) for rid in assignment.display_order)
    cases = [
        ({a: 1, b: 2}, []),  # a missing rank
        ({a: 1, b: 2, c: 5}, []),  # out of range
        ({a: 1, b: 1, c: 2}, []),  # a tie where ties are not allowed
        ({a: 1, b: 2, c: 3, "999999": 1}, []),  # a response of another comparison
        ({a: 1, b: 2, c: "x"}, []),  # not a number
        ({a: 1, b: 2, c: 3}, ["weird"]),  # unknown flag
    ]
    client.force_login(annotator)
    submit_url = reverse("labeling:submit", args=[project.slug, assignment.pk])
    for ranks, flags in cases:
        ui = client.post(submit_url, {**{f"rank_{rid}": rank for rid, rank in ranks.items()}, "flags": flags})
        api = clients["annotator"].post(
            "/api/v1/rankings/submit/",
            {"assignment": assignment.pk, "ranks": ranks, "flags": flags},
            format="json",
        )
        assert ui.status_code == 422 and api.status_code == 400, ranks
        messages = [message for field in api.json().values() for message in field]
        assert len(messages) == 1
        assert messages[0] in html.unescape(ui.content.decode()), (messages, ranks)
    assert not Ranking.objects.exists()
    done = clients["annotator"].post(
        "/api/v1/rankings/submit/", {"assignment": assignment.pk, "ranks": {a: 2, b: 1, c: 3}}, format="json"
    )
    assert done.status_code == 201 and done.json()["ranks"] == {a: 2, b: 1, c: 3}
    again = clients["annotator"].post(
        "/api/v1/rankings/submit/", {"assignment": assignment.pk, "ranks": {a: 2, b: 1, c: 3}}, format="json"
    )
    assert again.json() == {"non_field_errors": ["You already submitted this item."]}
    # Someone else's assignment: refused, as in the UI.
    other = clients["admin"].post(
        "/api/v1/rankings/submit/", {"assignment": assignment.pk, "choice": "a"}, format="json"
    )
    assert other.status_code == 403
    assert Assignment.objects.get(pk=assignment.pk).state == Assignment.State.SUBMITTED
    assert comparison.rankings.count() == 1


def test_bulk_import_uses_the_cli_validation(clients):
    bad = clients["admin"].post(
        "/api/v1/prompts/import/",
        {"project": "imp", "records": [{"prompt": "fine"}, {"prompt": ""}, {"messages": [{"role": "bot"}]}]},
        format="json",
    )
    assert bad.status_code == 400
    errors = bad.json()["errors"]
    assert errors[0] == "line 2, field 'prompt': must not be empty"
    assert errors[1] == "line 3, field 'messages[0].role': must be one of system, user, assistant"
    assert not Prompt.objects.filter(project__slug="imp").exists()  # all or nothing
    good = clients["admin"].post(
        "/api/v1/prompts/import/",
        {
            "project": "imp",
            "records": [
                {
                    "prompt": "2+2?",
                    "external_id": "q1",
                    "responses": [{"content": "4", "source": "m1"}, {"content": "5", "source": "m2"}],
                }
            ],
        },
        format="json",
    )
    assert good.status_code == 201 and good.json()["comparisons_created"] == 1
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("p.jsonl", b'{"prompt": "from a file", "domain": "math"}\n')
    filed = clients["admin"].post(
        "/api/v1/prompts/import/", {"project": "imp", "file": upload}, format="multipart"
    )
    assert filed.status_code == 201 and filed.json()["prompts_created"] == 1
    listed = clients["researcher"].get("/api/v1/prompts/?project=imp&domain=math").json()
    assert [p["messages"] for p in listed["results"]] == [[{"role": "user", "content": "from a file"}]]


def test_openapi_schema_validates_and_docs_work_offline(client):
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)  # drf-spectacular's OpenAPI 3 JSON-schema check (raises on error)
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/projects/",
        "/api/v1/prompts/import/",
        "/api/v1/rankings/next/",
        "/api/v1/rankings/submit/",
        "/api/v1/training-runs/{id}/",
        "/api/v1/model-versions/",
        "/api/v1/exports/{id}/download/",
        "/api/v1/auth/token/",
    ):
        assert expected in paths
    try:
        from openapi_spec_validator import validate
    except ImportError:
        pass
    else:
        import json

        validate(json.loads(json.dumps(schema, default=str)))
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower()
    bundle = "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
    assert f"/static/{bundle}" in docs  # served by this app (static files), not fetched from the internet
    from django.contrib.staticfiles import finders

    assert finders.find(bundle) is not None
    yaml_schema = client.get("/api/schema/")
    assert yaml_schema.status_code == 200 and b"openapi: 3" in yaml_schema.content


def test_token_command_and_endpoint(users, clients):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("api_token", "api-res", stdout=out)
    key = out.getvalue().strip()
    assert len(key) == 40
    rotated = StringIO()
    call_command("api_token", "api-res", "--rotate", stdout=rotated)
    assert rotated.getvalue().strip() != key
    wrong = clients["anonymous"].post(
        "/api/v1/auth/token/", {"username": "api-res", "password": "nope"}, format="json"
    )
    assert wrong.status_code == 400 and wrong.json() == {"non_field_errors": ["Wrong username or password."]}

"""Views through Django's test client: full pages, htmx partials, validation messages, permissions."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from labeling.models import Adjudication, Assignment, Prompt, Ranking
from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def ranking_project(db):
    project = make_project("rk", mode="ranking", k=4, overlap=2, guidelines="Be **fair**.")
    make_comparison(project, k=2, priority=2, text="Pick *one* <script>alert(1)</script>")
    make_comparison(project, k=4, priority=1)
    return project


def login(client, user):
    client.force_login(user)
    return client


def test_annotate_page_renders_pairwise_then_htmx_submit_swaps_in_the_next(
    client, annotator, ranking_project
):
    login(client, annotator)
    page = client.get(reverse("labeling:annotate", args=["rk"]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-kind="pairwise"' in html and "A is better" in html and 'id="guidelines"' in html
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<em>one</em>" in html
    )  # markdown, HTML escaped
    assert "<strong>fair</strong>" in html
    assignment = Assignment.objects.get(annotator=annotator)

    response = client.post(reverse("labeling:submit", args=["rk", assignment.pk]), {"choice": "a"}, **HX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body  # a fragment, not a page
    assert 'id="workspace"' in body and 'data-kind="ranking"' in body and "rank_" in body
    assert 'id="progress" class="progress muted" hx-swap-oob="true"' in body
    assert 'id="undo-bar" class="undo-bar" hx-swap-oob="true"' in body and "undo-button" in body
    assert Ranking.objects.filter(annotator=annotator).count() == 1


def test_invalid_ranking_shows_message_and_stores_nothing(client, annotator, ranking_project):
    login(client, annotator)
    first = assignment_lease_next(project=ranking_project, annotator=annotator)
    ranking_submit(assignment_id=first.pk, annotator=annotator, choice="a")
    four = assignment_lease_next(project=ranking_project, annotator=annotator)
    ids = four.display_order
    url = reverse("labeling:submit", args=["rk", four.pk])
    response = client.post(url, {f"rank_{ids[0]}": "1", f"rank_{ids[1]}": "2", "flags": ["broken"]}, **HX)
    assert response.status_code == 422
    body = response.content.decode()
    assert 'data-testid="error"' in body and "2 of 4 have none" in body
    assert f'name="rank_{ids[0]}" min="1" max="4" value="1"' in body  # what was typed is kept
    assert 'value="broken" checked' in body
    assert Ranking.objects.filter(comparison=four.comparison).count() == 0
    response = client.post(
        url, {**{f"rank_{rid}": str(i + 1) for i, rid in enumerate(ids)}, "rank_999999": "1"}, **HX
    )
    assert response.status_code == 422 and "not part of this comparison" in response.content.decode()
    response = client.post(url, {f"rank_{rid}": str(4 - i) for i, rid in enumerate(ids)}, **HX)
    assert response.status_code == 200 and 'data-testid="empty"' in response.content.decode()
    assert Ranking.objects.get(comparison=four.comparison).ranks == {
        str(rid): 4 - i for i, rid in enumerate(ids)
    }


def test_skip_and_undo_partials(client, annotator, ranking_project):
    login(client, annotator)
    client.get(reverse("labeling:annotate", args=["rk"]))
    a = Assignment.objects.get(annotator=annotator)
    response = client.post(reverse("labeling:skip", args=["rk", a.pk]), {"reason": "bogus"}, **HX)
    assert response.status_code == 422 and "Choose why" in response.content.decode()
    response = client.post(reverse("labeling:skip", args=["rk", a.pk]), {"reason": "unsure"}, **HX)
    assert response.status_code == 200 and "Skipped." in response.content.decode()
    b = Assignment.objects.get(annotator=annotator, state="leased")
    ids = b.display_order
    client.post(
        reverse("labeling:submit", args=["rk", b.pk]),
        {f"rank_{rid}": str(i + 1) for i, rid in enumerate(ids)},
        **HX,
    )
    response = client.post(reverse("labeling:undo", args=["rk"]), **HX)
    assert response.status_code == 200 and f'data-assignment="{b.pk}"' in response.content.decode()
    assert not Ranking.objects.filter(annotator=annotator).exists()


def test_annotators_only_touch_their_own_assignments(client, annotator, annotator2, ranking_project):
    theirs = assignment_lease_next(project=ranking_project, annotator=annotator2)
    login(client, annotator)
    response = client.post(reverse("labeling:submit", args=["rk", theirs.pk]), {"choice": "a"}, **HX)
    assert response.status_code == 404
    assert (
        client.post(reverse("labeling:skip", args=["rk", theirs.pk]), {"reason": "unsure"}).status_code == 404
    )
    ranking_submit(assignment_id=theirs.pk, annotator=annotator2, choice="a")
    page = client.get(reverse("labeling:my_rankings", args=["rk"]))
    assert page.status_code == 200 and "None yet." in page.content.decode()


def test_role_permissions(client, annotator, admin_user, ranking_project):
    comparison = ranking_project.comparisons.first()
    admin_only = [
        reverse("labeling:import"),
        reverse("labeling:dashboard", args=["rk"]),
        reverse("labeling:review", args=["rk"]),
        reverse("labeling:adjudicate", args=["rk", comparison.pk]),
    ]
    for url in admin_only:  # anonymous: to the login page
        assert client.get(url).status_code == 302
    login(client, annotator)
    for url in admin_only:
        assert client.get(url).status_code == 403, url
    researcher = make_user("res", role="researcher")
    login(client, researcher)
    assert client.get(reverse("labeling:annotate", args=["rk"])).status_code == 403
    login(client, admin_user)
    for url in admin_only:
        assert client.get(url).status_code == 200, url
    assert client.get(reverse("labeling:projects")).status_code == 200


def test_admin_import_upload_rejects_then_accepts(client, admin_user):
    login(client, admin_user)
    bad = SimpleUploadedFile("data.jsonl", b'{"prompt": "ok"}\n{"prompt": ""}\n')
    response = client.post(reverse("labeling:import"), {"project": "up", "file": bad, "pairing": "all"})
    assert response.status_code == 422
    assert "line 2, field &#x27;prompt&#x27;: must not be empty" in response.content.decode()
    assert not Prompt.objects.exists()
    good = SimpleUploadedFile(
        "data.jsonl",
        "\n".join(
            json.dumps(r)
            for r in [
                {"external_id": "q", "prompt": "Q?"},
                {"prompt_external_id": "q", "content": "A", "source": "m"},
                {"prompt_external_id": "q", "content": "B", "source": "n"},
            ]
        ).encode(),
    )
    response = client.post(
        reverse("labeling:import"), {"project": "up", "file": good, "build_k": "2", "pairing": "all"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("labeling:dashboard", args=["up"])
    assert Prompt.objects.filter(project__slug="up").count() == 1


def test_dashboard_and_htmx_adjudication(client, annotator, annotator2, admin_user):
    project = make_project("dash", overlap=2)
    comparison = make_comparison(project)
    rids = list(comparison.items.order_by("position").values_list("response_id", flat=True))
    for user, best in ((annotator, 0), (annotator2, 1)):  # they disagree
        a = assignment_lease_next(project=project, annotator=user)
        ranks = {str(rids[best]): 1, str(rids[1 - best]): 2}
        ranking_submit(
            assignment_id=a.pk, annotator=user, ranks=ranks, flags=["unsafe"] if user == annotator else []
        )
    login(client, admin_user)
    page = client.get(reverse("labeling:dashboard", args=["dash"])).content.decode()
    assert 'data-testid="rankings-count">2<' in page and "ann1" in page and "unsafe" in page
    review = client.get(reverse("labeling:review", args=["dash"])).content.decode()
    assert reverse("labeling:adjudicate", args=["dash", comparison.pk]) in review
    url = reverse("labeling:adjudicate", args=["dash", comparison.pk])
    bad = client.post(url, {f"rank_{rids[0]}": "1"}, **HX)
    assert (
        bad.status_code == 422 and "have none" in bad.content.decode() and not Adjudication.objects.exists()
    )
    ok = client.post(url, {f"rank_{rids[0]}": "2", f"rank_{rids[1]}": "1", "note": "n"}, **HX)
    assert ok.status_code == 200 and "Final ranking recorded" in ok.content.decode()
    assert "<html" not in ok.content.decode()
    assert Adjudication.objects.get(comparison=comparison).ranks == {str(rids[0]): 2, str(rids[1]): 1}
    assert "No disagreements" in client.get(reverse("labeling:review", args=["dash"])).content.decode()

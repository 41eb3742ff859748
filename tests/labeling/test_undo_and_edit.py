"""Undo brings the item back filled in as it was; "your rankings" shows the texts and edits within the rules."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from labeling.models import Ranking
from labeling.services.leasing import assignment_lease_next
from labeling.services.projects import adjudication_record
from labeling.services.rankings import UNDO_WINDOW_SECONDS, ranking_submit
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


def _input(html: str, response_id) -> str:
    return re.search(rf'<input[^>]*name="rank_{response_id}"[^>]*>', html).group(0)


def test_undo_of_a_ranking_restores_ranks_flags_and_rationale(client):
    project = make_project("undo4", mode="ranking", k=4, overlap=1)
    make_comparison(project, k=4)
    make_comparison(project, k=4)
    annotator = make_user("undoer")
    client.force_login(annotator)
    assignment = assignment_lease_next(project=project, annotator=annotator)
    order = assignment.display_order
    posted = {f"rank_{rid}": rank for rid, rank in zip(order, ["2", "1", "4", "3"], strict=True)}
    client.post(
        reverse("labeling:submit", args=["undo4", assignment.pk]),
        {**posted, "flags": ["off_topic"], "rationale": "B answers the question."}, **HX,
    )  # fmt: skip
    html = client.post(reverse("labeling:undo", args=["undo4"]), **HX).content.decode()
    assert f'data-assignment="{assignment.pk}"' in html
    for rid, rank in zip(order, ["2", "1", "4", "3"], strict=True):
        assert f'value="{rank}"' in _input(html, rid)
        assert f'data-rank-of="{rid}">rank {rank}<' in html  # the card shows it too
    assert re.search(r'value="off_topic" checked', html)
    assert "B answers the question.</textarea>" in html and 'id="rationale-panel" class="panel" open' in html


def test_undo_of_a_pairwise_choice_marks_the_button_that_was_pressed(client):
    project = make_project("undo2", overlap=1)
    make_comparison(project)
    annotator = make_user("undoer2")
    client.force_login(annotator)
    assignment = assignment_lease_next(project=project, annotator=annotator)
    client.post(reverse("labeling:submit", args=["undo2", assignment.pk]), {"choice": "b"}, **HX)
    html = client.post(reverse("labeling:undo", args=["undo2"]), **HX).content.decode()
    pressed = re.findall(r'<button type="submit" name="choice" value="(\w+)"[^>]*data-previous="true"', html)
    assert pressed == ["b"] and 'data-testid="previous-choice"' in html


def _ranked(project, annotator, ranks_in_display_order):
    assignment = assignment_lease_next(project=project, annotator=annotator)
    ranks = dict(zip((str(r) for r in assignment.display_order), ranks_in_display_order, strict=True))
    return ranking_submit(assignment_id=assignment.pk, annotator=annotator, ranks=ranks)


def test_your_rankings_show_the_texts_and_edit_in_place_within_the_undo_rules(client):
    project = make_project("mine", mode="ranking", k=3, overlap=1)
    make_comparison(project, k=3, text="Explain tides to a child.")
    make_comparison(project, k=3, text="Name a prime number.")
    annotator, other = make_user("mine1"), make_user("mine2")
    recent = _ranked(project, annotator, [1, 2, 3])
    old = _ranked(project, annotator, [3, 2, 1])
    Ranking.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(seconds=UNDO_WINDOW_SECONDS + 5)
    )
    client.force_login(annotator)

    html = client.get(reverse("labeling:my_rankings", args=["mine"])).content.decode()
    recent_html = html.split(f'id="ranking-{recent.pk}"')[1].split("</article>")[0]
    old_html = html.split(f'id="ranking-{old.pk}"')[1].split("</article>")[0]
    for html_part, ranking in ((recent_html, recent), (old_html, old)):
        prompt = ranking.comparison.prompt.messages[0]["content"]
        assert prompt in html_part
        for response in ranking.comparison.responses.all():
            assert response.content in html_part
    assert "Save changes" in recent_html and _input(recent_html, recent.display_order[0])
    assert (
        "Save changes" not in old_html and 'data-testid="rank">rank 3<' in old_html
    )  # past the window: read only

    url = reverse("labeling:my_ranking_edit", args=["mine", recent.pk])
    new_ranks = {f"rank_{rid}": rank for rid, rank in zip(recent.display_order, ["3", "1", "2"], strict=True)}
    response = client.post(url, {**new_ranks, "flags": ["unsafe"], "rationale": "changed my mind"}, **HX)
    assert response.status_code == 200 and "Saved." in response.content.decode()
    edited = Ranking.objects.get(pk=recent.pk)  # the same row: the slot, the assignment and the timing stay
    assert [edited.ranks[str(rid)] for rid in recent.display_order] == [3, 1, 2]
    assert edited.flags == ["unsafe"] and edited.rationale == "changed my mind"
    assert edited.seconds_spent == recent.seconds_spent and edited.assignment_id == recent.assignment_id

    bad = client.post(url, {f"rank_{recent.display_order[0]}": "1"}, **HX)  # incomplete: refused, kept
    assert bad.status_code == 422 and 'role="alert"' in bad.content.decode()
    assert Ranking.objects.get(pk=recent.pk).ranks == edited.ranks

    too_late = client.post(reverse("labeling:my_ranking_edit", args=["mine", old.pk]), new_ranks, **HX)
    assert too_late.status_code == 422 and Ranking.objects.get(pk=old.pk).ranks == old.ranks

    admin = make_user("mine-admin", role="admin")
    adjudication_record(comparison=recent.comparison, adjudicator=admin, ranks=recent.ranks)
    settled = client.post(url, {f"rank_{rid}": "1" for rid in recent.display_order[:1]} | new_ranks, **HX)
    assert settled.status_code == 422 and "settled" in settled.content.decode()

    client.force_login(other)
    assert client.post(url, new_ranks, **HX).status_code == 404  # not theirs: not even a hint


def test_undo_without_htmx_shows_the_withdrawn_item_not_the_next_lease(client):
    project = make_project("undo-plain", overlap=1)
    make_comparison(project, priority=2)
    make_comparison(project, priority=1)
    annotator = make_user("plain")
    client.force_login(annotator)
    first = assignment_lease_next(project=project, annotator=annotator)
    client.post(
        reverse("labeling:submit", args=["undo-plain", first.pk]), {"choice": "a"}
    )  # leases the next one
    assert assignment_lease_next(project=project, annotator=annotator).pk != first.pk
    page = client.post(reverse("labeling:undo", args=["undo-plain"]))
    html = page.content.decode()
    assert page.status_code == 200 and "<html" in html and f'data-assignment="{first.pk}"' in html
    assert re.search(r'value="a"[^>]*data-previous="true"', html)

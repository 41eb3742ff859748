"""Reviewers see what annotators said (rationales, flags) and go on to the next disagreement after saving."""

from __future__ import annotations

import pytest
from django.urls import reverse

from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


def _disagree(project, first, second, *, rationale: str) -> None:
    """Both rank the same comparison, in opposite orders (ranks by response, whatever order each was shown)."""
    for user, best, flags, why in ((first, 0, ["unsafe"], rationale), (second, 1, [], "")):
        assignment = assignment_lease_next(project=project, annotator=user)
        ids = sorted(str(rid) for rid in assignment.display_order)
        ranks = {ids[best]: 1, ids[1 - best]: 2}
        ranking_submit(assignment_id=assignment.pk, annotator=user, ranks=ranks, flags=flags, rationale=why)


def test_adjudication_shows_rationales_and_flags_and_leads_to_the_next_disagreement(client):
    project = make_project("adj", overlap=2)
    one, two, three = make_comparison(project), make_comparison(project), make_comparison(project)
    first, second = make_user("adj1"), make_user("adj2")
    _disagree(project, first, second, rationale="A cites a source <b>B</b> lacks.")
    _disagree(project, first, second, rationale="Shorter and right.")
    _disagree(project, first, second, rationale="")
    client.force_login(make_user("adj-boss", role="admin"))

    queue = [
        item.comparison for item in client.get(reverse("labeling:review", args=["adj"])).context["items"]
    ]
    worst, other, last_one = queue
    assert {worst, other, last_one} == {one, two, three}
    page = client.get(reverse("labeling:adjudicate", args=["adj", worst.pk])).content.decode()
    notes = page.split('data-testid="annotator-notes"')[1].split("</ul>")[0]
    rationale = worst.rankings.get(annotator=first).rationale
    assert "adj1" in notes and "adj2" in notes and '<span class="badge flag">unsafe</span>' in notes
    assert rationale.replace("<", "&lt;").replace(">", "&gt;") in notes and "no rationale" in notes

    rids = [str(rid) for rid in worst.items.order_by("position").values_list("response_id", flat=True)]
    saved = client.post(
        reverse("labeling:adjudicate", args=["adj", worst.pk]),
        {f"rank_{rids[0]}": "1", f"rank_{rids[1]}": "2"},
        **HX,
    ).content.decode()
    assert "Final ranking recorded" in saved
    assert f'id="next-disagreement" href="{reverse("labeling:adjudicate", args=["adj", other.pk])}"' in saved

    rids = [str(rid) for rid in other.items.order_by("position").values_list("response_id", flat=True)]
    without_htmx = client.post(
        reverse("labeling:adjudicate", args=["adj", other.pk]),
        {f"rank_{rids[0]}": "2", f"rank_{rids[1]}": "1"},
    )
    assert without_htmx.status_code == 302  # without htmx: straight on to the next one
    assert without_htmx.url == reverse("labeling:adjudicate", args=["adj", last_one.pk])
    rids = [str(rid) for rid in last_one.items.order_by("position").values_list("response_id", flat=True)]
    last = client.post(
        reverse("labeling:adjudicate", args=["adj", last_one.pk]),
        {f"rank_{rids[0]}": "1", f"rank_{rids[1]}": "2"},
        **HX,
    ).content.decode()
    assert 'data-testid="queue-empty"' in last and "next-disagreement" not in last

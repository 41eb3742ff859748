"""The home page as each role meets it, and the favicon."""

import re

import pytest
from django.contrib.staticfiles import finders

from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db


def test_annotator_home_offers_start_ranking_per_project_with_counts(client):
    busy = make_project("busy", name="Busy project", overlap=1)
    for _ in range(3):
        make_comparison(busy)
    make_project("done", name="Done project")  # nothing to rank there
    annotator = make_user("homer")
    ranking_submit(
        assignment_id=assignment_lease_next(project=busy, annotator=annotator).pk,
        annotator=annotator,
        choice="a",
    )
    client.force_login(annotator)
    html = client.get("/").content.decode()
    busy_row = re.search(r'<tr data-project="busy">.*?</tr>', html, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", busy_row, re.S)
    assert cells[1:4] == ["2", "1", '<a href="/annotate/busy/mine/">1</a>']
    assert '<a class="button" href="/annotate/busy/">Start ranking</a>' in busy_row
    done_row = re.search(r'<tr data-project="done">.*?</tr>', html, re.S).group(0)
    assert "Start ranking" not in done_row and "Nothing left" in done_row

    client.force_login(make_user("res-home", role="researcher"))
    assert 'id="your-work"' not in client.get("/").content.decode()


def test_favicon_is_linked_as_a_static_file(client):
    """The scalable icon for tabs; /favicon.ico at the root (WHITENOISE_ROOT) serves the rest."""
    client.force_login(make_user("fav"))
    html = client.get("/").content.decode()
    href = re.search(r'<link rel="icon" href="([^"]+)"', html).group(1)
    assert href.endswith("favicon.svg")
    assert "<svg" in open(finders.find("favicon.svg")).read()  # collectstatic ships it; whitenoise serves it

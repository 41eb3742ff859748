"""The leaderboard answers "did it get better?": the base model always there, few games marked preliminary."""

import itertools
import re

import pytest

from labeling.models import Prompt, Ranking, Response
from labeling.services.projects import comparison_get_or_create
from loop.selectors import leaderboard
from registry.models import ModelVersion
from tests.exports.factories import vote
from tests.labeling.factories import make_project, make_user

pytestmark = pytest.mark.django_db
_prompts = itertools.count()


def _policy(name: str, **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name, kind="policy", artifact_path=f"models/{name}", sha256="0" * 64, **fields
    )


def _games(project, first: Response, second: Response, *, wins: int, losses: int, voter) -> None:
    """`wins + losses` comparisons of the two sources on fresh prompts; `first` wins `wins` of them."""
    for n in range(wins + losses):
        prompt = Prompt.objects.create(
            project=project, external_id=f"q{next(_prompts)}", messages=[{"role": "user", "content": "q"}]
        )
        a = Response.objects.create(prompt=prompt, external_id="a", content="a", model_version=first.model_version,
                                    source_name=first.source_name)  # fmt: skip
        b = Response.objects.create(prompt=prompt, external_id="b", content="b", model_version=second.model_version,
                                    source_name=second.source_name)  # fmt: skip
        comparison, _ = comparison_get_or_create(prompt=prompt, responses=[a, b])
        vote(comparison, voter, [1, 2] if n < wins else [2, 1])


def test_base_model_always_listed_and_a_lucky_newcomer_stays_below_established_entries(client):
    project = make_project("board", overlap=1)
    base = _policy("base")
    tuned = _policy("tuned", parent=base, base=base)
    lucky = _policy("lucky", parent=base, base=base)
    voter = make_user("voter")
    reference = Response(source_name="human")
    client.force_login(make_user("reader", role="researcher"))

    # No game yet: the base model is there already, unrated.
    html = client.get("/leaderboard/board/").content.decode()
    row = re.search(rf'<tr data-model="#{base.pk} base".*?</tr>', html, re.S).group(0)
    assert "no games yet" in row and ">base<" in row

    _games(project, Response(model_version=tuned), reference, wins=18, losses=12, voter=voter)
    _games(
        project, Response(model_version=tuned), Response(model_version=base), wins=16, losses=14, voter=voter
    )
    _games(project, Response(model_version=lucky), reference, wins=2, losses=0, voter=voter)
    board = leaderboard(project=project, bootstrap=20)
    by_model = {row.model: row for row in board.rows}
    lucky_row, tuned_row = by_model[f"#{lucky.pk} lucky"], by_model[f"#{tuned.pk} tuned"]
    assert lucky_row.rating.elo > tuned_row.rating.elo, (
        "the setup must give the newcomer the higher raw rating"
    )
    assert lucky_row.preliminary and lucky_row.rank is None and lucky_row.games == 2
    assert not tuned_row.preliminary and tuned_row.rank == 1 and tuned_row.games == 60
    assert [row.model for row in board.rows].index(lucky_row.model) > board.rows.index(tuned_row)
    assert tuned_row.vs_base == (16 / 30, 30) and by_model[f"#{base.pk} base"].is_base

    html = client.get("/leaderboard/board/").content.decode()
    lucky_html = re.search(
        rf'<tr data-model="#{lucky.pk} lucky" class="preliminary">.*?</tr>', html, re.S
    ).group(0)
    assert 'data-testid="preliminary"' in lucky_html and '<td data-testid="games">2</td>' in lucky_html
    tuned_html = re.search(rf'<tr data-model="#{tuned.pk} tuned">.*?</tr>', html, re.S).group(0)
    assert '<td data-testid="rank">1</td>' in tuned_html and "53% <span" in tuned_html
    assert html.index(f"#{tuned.pk} tuned") < html.index(f"#{lucky.pk} lucky")
    assert Ranking.objects.count() == 62

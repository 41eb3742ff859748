"""Factories for the export tests: projects with votes, adjudications and gold, written straight to the tables."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from labeling.models import Adjudication, Assignment, Comparison, Ranking
from tests.labeling.conftest import (  # noqa: F401 - re-exported fixtures and factories
    make_comparison,
    make_project,
    make_user,
)


def vote(
    comparison: Comparison,
    user,
    ranks: list[int],
    *,
    flags: list[str] | None = None,
    both_bad: bool = False,
    at: datetime | None = None,
    seconds: float = 12.5,
) -> Ranking:
    """Record `user`'s ranking of `comparison`; `ranks` follows the comparison's response order."""
    response_ids = list(comparison.items.order_by("position").values_list("response_id", flat=True))
    at = at or timezone.now()
    assignment = Assignment.objects.create(
        comparison=comparison,
        annotator=user,
        project=comparison.project,
        state=Assignment.State.SUBMITTED,
        leased_at=at - timedelta(seconds=seconds),
        leased_until=at + timedelta(seconds=600),
        display_order=response_ids,
        finished_at=at,
    )
    ranking = Ranking.objects.create(
        comparison=comparison,
        annotator=user,
        assignment=assignment,
        ranks={str(rid): rank for rid, rank in zip(response_ids, ranks, strict=True)},
        flags=flags or [],
        both_bad=both_bad,
        seconds_spent=seconds,
        display_order=response_ids,
    )
    if at is not None:
        Ranking.objects.filter(pk=ranking.pk).update(created_at=at)
    return ranking


def adjudicate(comparison: Comparison, admin, ranks: list[int]) -> Adjudication:
    response_ids = list(comparison.items.order_by("position").values_list("response_id", flat=True))
    return Adjudication.objects.create(
        comparison=comparison,
        adjudicator=admin,
        ranks={str(rid): rank for rid, rank in zip(response_ids, ranks, strict=True)},
    )


def response_ids(comparison: Comparison) -> list[int]:
    return list(comparison.items.order_by("position").values_list("response_id", flat=True))


@pytest.fixture
def scenario(db):
    """A pairwise project with every case the filters care about.

    c_major: 2 of 3 prefer A (agreement 1/3) · c_tie: 1–1 (consensus tie) · c_adj: votes say A, the admin says B ·
    c_flag: one vote flagged unsafe · gold: u1 right, u2 wrong (u1 qualified, u2 not, u3 no evidence).
    """
    project = make_project("exp", overlap=3, trust_threshold=0.6)
    u1, u2, u3 = (make_user(f"exp{i}") for i in (1, 2, 3))
    admin = make_user("exp-admin", role="admin")
    c_major = make_comparison(project, text="Which is better, A or B?")
    c_tie = make_comparison(project)
    c_adj = make_comparison(project)
    c_flag = make_comparison(project)
    gold = make_comparison(project, is_gold=True)
    vote(c_major, u1, [1, 2])
    vote(c_major, u2, [1, 2])
    vote(c_major, u3, [2, 1])
    vote(c_tie, u1, [1, 2])
    vote(c_tie, u2, [2, 1])
    vote(c_adj, u1, [1, 2])
    vote(c_adj, u2, [1, 2])
    adjudicate(c_adj, admin, [2, 1])
    vote(c_flag, u1, [1, 2], flags=["unsafe"])
    vote(c_flag, u2, [1, 2])
    vote(gold, u1, [1, 2])
    vote(gold, u2, [2, 1])
    return {
        "project": project,
        "users": (u1, u2, u3),
        "admin": admin,
        "c_major": c_major,
        "c_tie": c_tie,
        "c_adj": c_adj,
        "c_flag": c_flag,
        "gold": gold,
    }

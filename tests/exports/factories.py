"""Factories for the export tests: projects with votes, adjudications and gold, written straight to the tables."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from labeling.models import Adjudication, Assignment, Comparison, Ranking
from tests.labeling.factories import (  # noqa: F401 - re-exported factories
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

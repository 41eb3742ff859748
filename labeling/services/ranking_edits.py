"""Editing one's own ranking from "your rankings": the same rules as undo (within the undo window, never after an
adjudication settled the comparison), in place, so the annotator keeps their slot and the timing stays honest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from labeling.models import Adjudication, Ranking
from labeling.ranks import ranks_validate
from labeling.services.rankings import UNDO_WINDOW_SECONDS, ranking_extras_validate


def ranking_editable(*, ranking: Ranking, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    if ranking.created_at < now - timedelta(seconds=UNDO_WINDOW_SECONDS):
        return False
    return not Adjudication.objects.filter(comparison_id=ranking.comparison_id).exists()


@transaction.atomic
def ranking_edit(
    *,
    ranking_id: int,
    annotator,
    ranks: Mapping,
    flags: Iterable[str] = (),
    rationale: str = "",
    now: datetime | None = None,
) -> Ranking:
    """Replace the ranks, flags and rationale of the annotator's own ranking. Raises ValidationError (nothing
    changed) when it is no longer editable or the input is wrong, PermissionDenied for someone else's ranking."""
    now = now or timezone.now()
    queryset = Ranking.objects.select_related("comparison__project")
    if connection.features.has_select_for_update:
        queryset = queryset.select_for_update(of=("self",))
    ranking = queryset.filter(pk=ranking_id).first()
    if ranking is None or ranking.annotator_id != annotator.pk:
        raise PermissionDenied("This ranking is not yours.")
    if not ranking_editable(ranking=ranking, now=now):
        raise ValidationError(
            {
                "__all__": f"Only rankings of the last {UNDO_WINDOW_SECONDS} s that no reviewer settled can be edited."
            }
        )
    project = ranking.comparison.project
    ranking.ranks = ranks_validate(
        ranks=ranks, response_ids=[str(rid) for rid in ranking.display_order], allow_ties=project.allow_ties
    )
    ranking.flags = ranking_extras_validate(flags=flags, rationale=rationale)
    ranking.rationale = rationale.strip()
    ranking.full_clean(validate_unique=False, validate_constraints=False)
    ranking.save(update_fields=["ranks", "flags", "rationale"])
    return ranking

"""Leasing the next comparison to an annotator.

Rules: a comparison is ranked by `project.overlap` distinct annotators; a slot is taken by a submitted ranking or
by a lease that has not expired (an expired lease returns its slot to the pool); nobody gets a comparison they
already submitted or skipped; higher priority first, then oldest. Gold comparisons are mixed in at the
project's gold ratio and are shown to every annotator (they measure the annotator, not the item).

Concurrency: on Postgres the candidate row is taken with `SELECT … FOR UPDATE SKIP LOCKED`, so concurrent
annotators never wait on each other and never take the same row at the same time. The slot count is re-read
with a fresh statement after the lock is held: every writer of a slot holds that lock until it commits, so the
count cannot be stale (READ COMMITTED takes a new snapshot per statement). On SQLite (no row locks) the settings
open every transaction with BEGIN IMMEDIATE, which serialises writers; the same code is correct there.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from labeling.models import Assignment, Comparison, ComparisonResponse, Project

# How many locked candidates one lease call inspects before it gives up for now (only reached when the
# candidate query's snapshot was stale for many rows in a row).
_MAX_CANDIDATES = 16


def slot_count_expression(*, now: datetime, exclude_annotator_id: int | None = None) -> Coalesce:
    """Subquery: slots of the outer comparison taken by submissions and live leases (optionally not counting one
    annotator's own assignment)."""
    taken = Assignment.objects.filter(comparison=OuterRef("pk")).filter(
        Q(state=Assignment.State.SUBMITTED) | Q(state=Assignment.State.LEASED, leased_until__gt=now)
    )
    if exclude_annotator_id is not None:
        taken = taken.exclude(annotator_id=exclude_annotator_id)
    counted = taken.order_by().values("comparison").annotate(n=Count("id")).values("n")
    return Coalesce(Subquery(counted), Value(0))


def slots_taken(*, comparison_id: int, now: datetime, exclude_annotator_id: int) -> int:
    return (
        Assignment.objects.filter(comparison_id=comparison_id)
        .filter(Q(state=Assignment.State.SUBMITTED) | Q(state=Assignment.State.LEASED, leased_until__gt=now))
        .exclude(annotator_id=exclude_annotator_id)
        .count()
    )


def _done_by(annotator_id: int) -> Exists:
    """The outer comparison was already submitted or skipped by this annotator."""
    return Exists(
        Assignment.objects.filter(
            comparison=OuterRef("pk"),
            annotator_id=annotator_id,
            state__in=[Assignment.State.SUBMITTED, Assignment.State.SKIPPED],
        )
    )


def regular_candidates(*, project: Project, annotator_id: int, now: datetime) -> QuerySet[Comparison]:
    """Open, non-gold comparisons this annotator may still rank and that have a free slot, in queue order."""
    return (
        Comparison.objects.filter(project=project, status=Comparison.Status.OPEN, is_gold=False)
        .alias(
            done=_done_by(annotator_id),
            taken=slot_count_expression(now=now, exclude_annotator_id=annotator_id),
        )
        .filter(done=False, taken__lt=project.overlap)
        .order_by("-priority", "id")
    )


def gold_candidates(*, project: Project, annotator_id: int) -> QuerySet[Comparison]:
    mine = Assignment.objects.filter(comparison=OuterRef("pk"), annotator_id=annotator_id)
    return (
        Comparison.objects.filter(project=project, is_gold=True)
        .alias(mine=Exists(mine))
        .filter(mine=False)
        .order_by("-priority", "id")
    )


def gold_due(*, project: Project, annotator_id: int) -> bool:
    """Whether the annotator's next item should be gold: gold stays at floor(ratio × items so far + 1)."""
    if project.gold_ratio <= 0:
        return False
    counts = Assignment.objects.filter(project=project, annotator_id=annotator_id).aggregate(
        total=Count("id"), gold=Count("id", filter=Q(comparison__is_gold=True))
    )
    return counts["gold"] < math.floor(project.gold_ratio * (counts["total"] + 1) + 1e-9)


def _display_order(comparison: Comparison) -> list[int]:
    order = list(
        ComparisonResponse.objects.filter(comparison=comparison)
        .order_by("position")
        .values_list("response_id", flat=True)
    )
    random.SystemRandom().shuffle(order)
    return order


def _take(*, comparison: Comparison, project: Project, annotator_id: int, now: datetime) -> Assignment:
    """Create (or revive this annotator's expired) lease on a comparison whose row this transaction holds."""
    until = now + timedelta(seconds=project.lease_seconds)
    existing = Assignment.objects.filter(comparison=comparison, annotator_id=annotator_id).first()
    if existing is not None:
        existing.state = Assignment.State.LEASED
        existing.leased_at = now
        existing.leased_until = until
        existing.full_clean(validate_unique=False, validate_constraints=False)
        existing.save(update_fields=["state", "leased_at", "leased_until"])
        return existing
    assignment = Assignment(
        comparison=comparison,
        annotator_id=annotator_id,
        project=project,
        state=Assignment.State.LEASED,
        leased_at=now,
        leased_until=until,
        display_order=_display_order(comparison),
    )
    assignment.full_clean(validate_unique=False, validate_constraints=False)
    assignment.save()
    return assignment


def _lock(queryset: QuerySet[Comparison], *, skip_locked: bool) -> QuerySet[Comparison]:
    if not connection.features.has_select_for_update:
        return queryset  # SQLite: BEGIN IMMEDIATE already serialises writers.
    if skip_locked and connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    return queryset.select_for_update(of=("self",))


def _lease_regular(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    inspected: list[int] = []
    for skip_locked in (True, False):
        # Second pass (only when the first locked nothing): wait for rows other annotators hold right now, so a
        # busy moment is not mistaken for an empty queue. Holding no lock yet, this wait cannot deadlock.
        if not skip_locked and inspected:
            return None
        while len(inspected) < _MAX_CANDIDATES:
            candidates = regular_candidates(project=project, annotator_id=annotator_id, now=now).exclude(
                id__in=inspected
            )
            comparison = _lock(candidates, skip_locked=skip_locked).first()
            if comparison is None:
                break
            inspected.append(comparison.id)
            if comparison.status != Comparison.Status.OPEN:
                continue
            if (
                slots_taken(comparison_id=comparison.id, now=now, exclude_annotator_id=annotator_id)
                < project.overlap
            ):
                return _take(comparison=comparison, project=project, annotator_id=annotator_id, now=now)
    return None


def _lease_gold(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    comparison = gold_candidates(project=project, annotator_id=annotator_id).first()
    if comparison is None:
        return None
    try:
        with transaction.atomic():
            return _take(comparison=comparison, project=project, annotator_id=annotator_id, now=now)
    except IntegrityError:  # the same annotator in a second tab took it a moment ago
        return None


def assignment_current(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    """The annotator's oldest live lease in this project, if any."""
    return (
        Assignment.objects.filter(
            project=project, annotator_id=annotator_id, state=Assignment.State.LEASED, leased_until__gt=now
        )
        .order_by("leased_at", "id")
        .first()
    )


def assignment_lease_next(*, project: Project, annotator, now: datetime | None = None) -> Assignment | None:
    """The annotator's live lease if there is one (renewed), else a new lease on the next comparison, else None."""
    now = now or timezone.now()
    annotator_id = annotator.pk
    with transaction.atomic():
        current = assignment_current(project=project, annotator_id=annotator_id, now=now)
        if current is not None:
            current.leased_until = now + timedelta(seconds=project.lease_seconds)
            current.save(update_fields=["leased_until"])
            return current
        assignment = None
        if gold_due(project=project, annotator_id=annotator_id):
            assignment = _lease_gold(project=project, annotator_id=annotator_id, now=now)
        if assignment is None:
            assignment = _lease_regular(project=project, annotator_id=annotator_id, now=now)
        return assignment

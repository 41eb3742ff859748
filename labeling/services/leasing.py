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

from core import precompiled
from labeling.models import Assignment, Comparison, ComparisonResponse, Project, Prompt, Response

# How many locked candidates one lease call inspects before it gives up for now (only reached when the
# candidate query's snapshot was stale for many rows in a row).
_MAX_CANDIDATES = 16

# The hot path of every lease as precompiled SQL: building these statements with the ORM cost several times the
# CPU of running them. They say the same as regular_candidates() / slot_state() (tests hold them to it) and run on
# Postgres and SQLite alike; only the row-lock suffix differs.
_A, _C = Assignment._meta.db_table, Comparison._meta.db_table
_P, _R = Prompt._meta.db_table, Response._meta.db_table
_CR = ComparisonResponse._meta.db_table
_LEASED, _SUBMITTED, _SKIPPED = (f"'{state}'" for state in Assignment.State.values)
_CURRENT_SQL = (
    f'SELECT id FROM "{_A}" WHERE project_id = %s AND annotator_id = %s AND state = {_LEASED} '
    "AND leased_until > %s ORDER BY leased_at, id LIMIT 1"
)
_PROMPT_FIELDS = ("id", "project_id", "messages")
# The open queue is read in order inside a planning fence (OFFSET 0 on Postgres), and the per-comparison checks run
# only until the first row passes: with stale statistics (an assignment table growing faster than autovacuum
# analyses it) the planner otherwise filtered and sorted every open comparison, scanning assignments for each.
_CANDIDATE_SQL = (
    f"SELECT {precompiled.columns(Comparison, 'c', 'c_')}, "
    f"{precompiled.columns(Prompt, 'p', 'p_', only=_PROMPT_FIELDS)} "
    f'FROM (SELECT q.id, q.priority FROM "{_C}" q WHERE q.project_id = %s '
    f"AND q.status = '{Comparison.Status.OPEN}' AND NOT q.is_gold {{exclude}}"
    "ORDER BY q.priority DESC, q.id{fence}) o "
    f'JOIN "{_C}" c ON c.id = o.id JOIN "{_P}" p ON p.id = c.prompt_id '
    f'WHERE NOT EXISTS (SELECT 1 FROM "{_A}" d WHERE d.comparison_id = c.id AND d.annotator_id = %s '
    f"AND d.state IN ({_SUBMITTED}, {_SKIPPED})) "
    f'AND (SELECT COUNT(*) FROM "{_A}" s WHERE s.comparison_id = c.id AND s.annotator_id <> %s '
    f"AND (s.state = {_SUBMITTED} OR (s.state = {_LEASED} AND s.leased_until > %s))) < %s "
    "ORDER BY o.priority DESC, o.id LIMIT 1{lock}"
)
_SLOT_STATE_SQL = (
    f"SELECT COUNT(CASE WHEN annotator_id <> %s AND (state = {_SUBMITTED} "
    f"OR (state = {_LEASED} AND leased_until > %s)) THEN 1 END), "
    "MAX(CASE WHEN annotator_id = %s THEN id END), "
    f"COUNT(CASE WHEN annotator_id = %s AND state IN ({_SUBMITTED}, {_SKIPPED}) THEN 1 END) "
    f'FROM "{_A}" WHERE comparison_id = %s'
)
_RESPONSES_SQL = (
    f'SELECT {precompiled.columns(Response, "r", "")} FROM "{_R}" r '
    f'JOIN "{_CR}" cr ON cr.response_id = r.id WHERE cr.comparison_id = %s ORDER BY cr.position'
)


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


def regular_open(*, project: Project) -> QuerySet[Comparison]:
    return Comparison.objects.filter(project=project, status=Comparison.Status.OPEN, is_gold=False)


def _with_availability(queryset: QuerySet[Comparison], *, annotator_id: int, now: datetime):
    return queryset.alias(
        done=_done_by(annotator_id), taken=slot_count_expression(now=now, exclude_annotator_id=annotator_id)
    )


def regular_candidates(*, project: Project, annotator_id: int, now: datetime) -> QuerySet[Comparison]:
    """Open, non-gold comparisons this annotator may still rank and that have a free slot, in queue order."""
    return (
        _with_availability(regular_open(project=project), annotator_id=annotator_id, now=now)
        .filter(done=False, taken__lt=project.overlap)
        .order_by("-priority", "id")
    )


def regular_unavailable(*, project: Project, annotator_id: int, now: datetime) -> QuerySet[Comparison]:
    """The other open, non-gold comparisons: done by this annotator, or every slot taken by others."""
    return _with_availability(regular_open(project=project), annotator_id=annotator_id, now=now).filter(
        Q(done=True) | Q(taken__gte=project.overlap)
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


# The responses of a comparison are loaded once per lease (for the display order) and kept on the assignment, so
# the payload and the page that show them need no second query.
_LOADED_RESPONSES = "_loaded_responses"
# Foreign keys that full_clean() would check with one query each; the lease holds the comparison row (and thereby
# its project) and the annotator is the user of this request, so they exist.
_KNOWN_TO_EXIST = ["comparison", "annotator", "project"]


def responses_loaded_with(assignment: Assignment) -> dict[int, Response] | None:
    """{response id: Response} when the lease that returned this assignment loaded them, else None."""
    return assignment.__dict__.get(_LOADED_RESPONSES)


def _comparison_responses(comparison: Comparison) -> list[Response]:
    return [
        precompiled.instance(Response, row, "") for row in precompiled.fetch(_RESPONSES_SQL, [comparison.pk])
    ]


def slot_state(*, comparison_id: int, now: datetime, annotator_id: int) -> dict:
    """In one statement: slots of the comparison others hold (`taken`), and this annotator's own assignment on it
    (`mine`: its id or None; `mine_done`: whether it was submitted or skipped)."""
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(_SLOT_STATE_SQL, [annotator_id, at, annotator_id, annotator_id, comparison_id])
        taken, mine, mine_done = cursor.fetchone()
    return {"taken": taken, "mine": mine, "mine_done": mine_done}


def _take(
    *, comparison: Comparison, project: Project, annotator_id: int, now: datetime, existing_id: int | None
) -> Assignment:
    """Create (or revive this annotator's expired) lease on a comparison whose row this transaction holds."""
    until = now + timedelta(seconds=project.lease_seconds)
    responses = _comparison_responses(comparison)
    if existing_id is not None:
        existing = Assignment.objects.get(pk=existing_id)
        existing.state = Assignment.State.LEASED
        existing.leased_at = now
        existing.leased_until = until
        existing.full_clean(exclude=_KNOWN_TO_EXIST, validate_unique=False, validate_constraints=False)
        existing.save(update_fields=["state", "leased_at", "leased_until"])
        assignment = existing
    else:
        order = [response.pk for response in responses]
        random.SystemRandom().shuffle(order)
        assignment = Assignment(
            comparison=comparison,
            annotator_id=annotator_id,
            project=project,
            state=Assignment.State.LEASED,
            leased_at=now,
            leased_until=until,
            display_order=order,
        )
        assignment.full_clean(exclude=_KNOWN_TO_EXIST, validate_unique=False, validate_constraints=False)
        assignment.save()
    assignment.comparison = comparison
    assignment.project = project
    assignment.__dict__[_LOADED_RESPONSES] = {response.pk: response for response in responses}
    return assignment


def _lock_next_candidate(
    *, project: Project, annotator_id: int, now: datetime, skip: list[int], skip_locked: bool
) -> Comparison | None:
    """The first of regular_candidates() not in `skip`, row-locked (with its prompt's messages)."""
    features = connection.features
    lock = ""
    if features.has_select_for_update:  # SQLite: BEGIN IMMEDIATE already serialises writers.
        lock = " FOR UPDATE OF c"
        if skip_locked and features.has_select_for_update_skip_locked:
            lock += " SKIP LOCKED"
    exclude = f"AND q.id NOT IN ({', '.join(['%s'] * len(skip))}) " if skip else ""
    fence = " OFFSET 0" if connection.vendor == "postgresql" else ""
    at = connection.ops.adapt_datetimefield_value(now)
    params = [project.pk, *skip, annotator_id, annotator_id, at, project.overlap]
    rows = precompiled.fetch(_CANDIDATE_SQL.format(exclude=exclude, fence=fence, lock=lock), params)
    if not rows:
        return None
    comparison = precompiled.instance(Comparison, rows[0], "c_")
    comparison.prompt = precompiled.instance(Prompt, rows[0], "p_", only=_PROMPT_FIELDS)
    return comparison


def _lease_regular(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    inspected: list[int] = []
    for skip_locked in (True, False):
        # Second pass (only when the first locked nothing): wait for rows other annotators hold right now, so a
        # busy moment is not mistaken for an empty queue. Holding no lock yet, this wait cannot deadlock.
        if not skip_locked and inspected:
            return None
        while len(inspected) < _MAX_CANDIDATES:
            comparison = _lock_next_candidate(
                project=project, annotator_id=annotator_id, now=now, skip=inspected, skip_locked=skip_locked
            )
            if comparison is None:
                break
            inspected.append(comparison.id)
            if comparison.status != Comparison.Status.OPEN:
                continue
            # A fresh statement now that the row is locked: the candidate query's snapshot may predate a lease
            # or a submission another annotator committed meanwhile.
            state = slot_state(comparison_id=comparison.id, now=now, annotator_id=annotator_id)
            if state["mine_done"] or state["taken"] >= project.overlap:
                continue
            return _take(
                comparison=comparison,
                project=project,
                annotator_id=annotator_id,
                now=now,
                existing_id=state["mine"],
            )
    return None


def _lease_gold(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    comparison = gold_candidates(project=project, annotator_id=annotator_id).select_related("prompt").first()
    if comparison is None:
        return None
    try:
        with transaction.atomic():
            return _take(
                comparison=comparison, project=project, annotator_id=annotator_id, now=now, existing_id=None
            )
    except IntegrityError:  # the same annotator in a second tab took it a moment ago
        return None


def assignment_current(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    """The annotator's oldest live lease in this project, if any (with its comparison and prompt)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _CURRENT_SQL, [project.pk, annotator_id, connection.ops.adapt_datetimefield_value(now)]
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return Assignment.objects.select_related("comparison__prompt").get(pk=row[0])


def assignment_lease_next(*, project: Project, annotator, now: datetime | None = None) -> Assignment | None:
    """The annotator's live lease if there is one (renewed), else a new lease on the next comparison, else None."""
    now = now or timezone.now()
    annotator_id = annotator.pk
    with transaction.atomic():
        current = assignment_current(project=project, annotator_id=annotator_id, now=now)
        if current is not None:
            current.leased_until = now + timedelta(seconds=project.lease_seconds)
            current.save(update_fields=["leased_until"])
            current.project = project
            return current
        assignment = None
        if gold_due(project=project, annotator_id=annotator_id):
            assignment = _lease_gold(project=project, annotator_id=annotator_id, now=now)
        if assignment is None:
            assignment = _lease_regular(project=project, annotator_id=annotator_id, now=now)
        return assignment

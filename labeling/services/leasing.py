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
On Postgres the same steps run inside labeling_lease_regular() (migration 0009) unless DB_HOT_PATH_FUNCTIONS is off.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from core import precompiled
from labeling.models import Assignment, Comparison, ComparisonResponse, Project, Prompt, Response

# How many locked candidates one lease call inspects before it gives up for now (only reached when the
# candidate query's snapshot was stale for many rows in a row).
_MAX_CANDIDATES = 16

# The hot path of every lease as precompiled SQL: building these statements with the ORM cost several times the
# CPU of running them. They say the same as regular_candidates() / slots_taken() (tests hold them to it) and run on
# Postgres and SQLite alike; only the row-lock suffix differs.
_A, _C = Assignment._meta.db_table, Comparison._meta.db_table
_P, _R = Prompt._meta.db_table, Response._meta.db_table
_CR = ComparisonResponse._meta.db_table
_LEASED, _SUBMITTED, _SKIPPED = (f"'{state}'" for state in Assignment.State.values)
_CURRENT_SQL = (
    f'SELECT id FROM "{_A}" WHERE project_id = %s AND annotator_id = %s AND state = {_LEASED} '
    "AND leased_until > %s ORDER BY leased_at, id LIMIT 1"
)


def other_live_lease_sql(*, project: str) -> str:
    """A scalar subquery: the id of the annotator's oldest live lease in the project `project` (an SQL expression)
    other than one assignment; params: annotator id, now, that assignment's id. Read before that assignment is
    submitted or skipped, it is the lease assignment_lease_next(…) would look up afterwards."""
    return _CURRENT_SQL.replace("project_id = %s", f"project_id = {project}").replace(
        " ORDER BY", " AND id <> %s ORDER BY"
    )


# The project by slug with the id of the annotator's oldest live lease in it: the `next` request's first two
# questions in one statement.
_PROJECT_WITH_CURRENT_SQL = (
    f"SELECT {precompiled.columns(Project, 'p', '')}, "
    f"({_CURRENT_SQL.replace('project_id = %s', 'project_id = p.id')}) AS current_lease_id "
    f'FROM "{Project._meta.db_table}" p WHERE p.slug = %s'
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
_RESPONSES_SQL = (
    f'SELECT {precompiled.columns(Response, "r", "")} FROM "{_R}" r '
    f'JOIN "{_CR}" cr ON cr.response_id = r.id WHERE cr.comparison_id = %s ORDER BY cr.position'
)
# The locked candidate with its responses (one row per response, in position order).
_CANDIDATE_WITH_RESPONSES_SQL = (
    f"SELECT cand.*, {precompiled.columns(Response, 'r', 'r_')} FROM ({_CANDIDATE_SQL}) cand "
    f'JOIN "{_CR}" cr ON cr.comparison_id = cand.c_id JOIN "{_R}" r ON r.id = cr.response_id '
    "ORDER BY cr.position"
)


def _insert_fields(model) -> list:
    return [field for field in model._meta.concrete_fields if not field.primary_key]


def precompiled_insert(model) -> str:
    """`INSERT INTO "table" (every column but the id) VALUES (%s, …)`, the values as insert_values() gives them."""
    fields = _insert_fields(model)
    names = ", ".join(f'"{field.column}"' for field in fields)
    return f'INSERT INTO "{model._meta.db_table}" ({names}) VALUES ({", ".join(["%s"] * len(fields))})'


def insert_values(instance) -> list:
    """The instance's column values for precompiled_insert(), prepared as the ORM's insert prepares them
    (auto_now_add fields are set on the instance)."""
    return [
        field.get_db_prep_save(field.pre_save(instance, True), connection)
        for field in _insert_fields(type(instance))
    ]


# Takes a slot of a comparison whose row this transaction holds, in one statement: the slot count is read by this
# fresh statement after the lock (see the module docstring), and this annotator's expired lease on it, if any, is
# revived (keeping its display order) by the upsert. No row comes back when the slots are full or this annotator
# already submitted or skipped it.
_TAKE_SQL = (
    f'INSERT INTO "{_A}" ({{names}}) SELECT {{values}} '
    f'WHERE NOT EXISTS (SELECT 1 FROM "{_A}" d WHERE d.comparison_id = %s AND d.annotator_id = %s '
    f"AND d.state IN ({_SUBMITTED}, {_SKIPPED})) {{slots}}"
    "ON CONFLICT (comparison_id, annotator_id) DO UPDATE SET state = excluded.state, "
    f'leased_at = excluded.leased_at, leased_until = excluded.leased_until WHERE "{_A}".state = {_LEASED} '
    "RETURNING id, display_order"
)
_SLOTS_FREE = (
    f'AND (SELECT COUNT(*) FROM "{_A}" s WHERE s.comparison_id = %s AND s.annotator_id <> %s '
    f"AND (s.state = {_SUBMITTED} OR (s.state = {_LEASED} AND s.leased_until > %s))) < %s "
)
_TAKEN_FIELDS = ("id", "display_order")


@cache
def _take_sql(vendor: str, *, slots: bool) -> str:
    fields = _insert_fields(Assignment)
    # Postgres types the SELECT list's parameters by their values (a string is text, not varchar or jsonb):
    # cast each to its column's type. SQLite's columns take any value (a CAST would change its affinity).
    values = (
        ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in fields)
        if vendor == "postgresql"
        else ", ".join(["%s"] * len(fields))
    )
    names = ", ".join(f'"{field.column}"' for field in fields)
    return _TAKE_SQL.format(names=names, values=values, slots=_SLOTS_FREE if slots else "")


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


def _take(
    *,
    comparison: Comparison,
    responses: list[Response],
    project: Project,
    annotator_id: int,
    now: datetime,
    overlap: int | None,
) -> Assignment | None:
    """Lease a comparison (or revive this annotator's expired lease on it) in one statement; None when, with
    `overlap` given, its slots are full, or when this annotator already submitted or skipped it. A regular
    comparison's row must be locked by this transaction (gold ones have no slots to count: `overlap` None)."""
    order = [response.pk for response in responses]
    random.SystemRandom().shuffle(order)
    assignment = Assignment(
        comparison=comparison,
        annotator_id=annotator_id,
        project=project,
        state=Assignment.State.LEASED,
        leased_at=now,
        leased_until=now + timedelta(seconds=project.lease_seconds),
        display_order=order,
    )
    assignment.full_clean(exclude=_KNOWN_TO_EXIST, validate_unique=False, validate_constraints=False)
    params = [*insert_values(assignment), comparison.pk, annotator_id]
    if overlap is not None:
        params += [comparison.pk, annotator_id, connection.ops.adapt_datetimefield_value(now), overlap]
    rows = precompiled.fetch(_take_sql(connection.vendor, slots=overlap is not None), params, prepare=True)
    if not rows:
        return None
    taken = precompiled.instance(Assignment, rows[0], "", only=_TAKEN_FIELDS)
    assignment.pk, assignment.display_order = taken.pk, taken.display_order  # a revived lease keeps its order
    assignment._state.adding, assignment._state.db = False, connection.alias
    assignment.comparison = comparison
    assignment.project = project
    assignment.__dict__[_LOADED_RESPONSES] = {response.pk: response for response in responses}
    return assignment


def _lock_next_candidate(
    *, project: Project, annotator_id: int, now: datetime, skip: list[int], skip_locked: bool
) -> tuple[Comparison, list[Response]] | None:
    """The first of regular_candidates() not in `skip`, row-locked (with its prompt's messages), and its
    responses in position order."""
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
    sql = _CANDIDATE_WITH_RESPONSES_SQL.format(exclude=exclude, fence=fence, lock=lock)
    rows = precompiled.fetch(sql, params, prepare=True)
    if not rows:
        return None
    comparison = precompiled.instance(Comparison, rows[0], "c_")
    comparison.prompt = precompiled.instance(Prompt, rows[0], "p_", only=_PROMPT_FIELDS)
    return comparison, [precompiled.instance(Response, row, "r_") for row in rows]


def _lease_regular(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    inspected: list[int] = []
    for skip_locked in (True, False):
        # Second pass (only when the first locked nothing): wait for rows other annotators hold right now, so a
        # busy moment is not mistaken for an empty queue. Holding no lock yet, this wait cannot deadlock.
        if not skip_locked and inspected:
            return None
        while len(inspected) < _MAX_CANDIDATES:
            found = _lock_next_candidate(
                project=project, annotator_id=annotator_id, now=now, skip=inspected, skip_locked=skip_locked
            )
            if found is None:
                break
            comparison, responses = found
            inspected.append(comparison.id)
            if comparison.status != Comparison.Status.OPEN:
                continue
            # _take recounts the slots in a fresh statement now that the row is locked: the candidate query's
            # snapshot may predate a lease or a submission another annotator committed meanwhile.
            assignment = _take(
                comparison=comparison,
                responses=responses,
                project=project,
                annotator_id=annotator_id,
                now=now,
                overlap=project.overlap,
            )
            if assignment is not None:
                return assignment
    return None


def _lease_gold(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    comparison = gold_candidates(project=project, annotator_id=annotator_id).select_related("prompt").first()
    if comparison is None:
        return None
    # Shown to every annotator: no slots to count. The upsert makes a second tab of the same annotator that took
    # it a moment ago share that lease rather than fail on the unique constraint.
    return _take(
        comparison=comparison,
        responses=_comparison_responses(comparison),
        project=project,
        annotator_id=annotator_id,
        now=now,
        overlap=None,
    )


def assignment_current(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    """The annotator's oldest live lease in this project, if any (with its comparison and prompt)."""
    pk = _current_lease_id(project=project, annotator_id=annotator_id, now=now)
    return None if pk is None else _assignment_with_prompt(pk)


def _current_lease_id(*, project: Project, annotator_id: int, now: datetime) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            _CURRENT_SQL, [project.pk, annotator_id, connection.ops.adapt_datetimefield_value(now)]
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


def _assignment_with_prompt(pk: int) -> Assignment:
    return Assignment.objects.select_related("comparison__prompt").get(pk=pk)


def project_with_current_lease(
    *, slug: str, annotator_id: int, now: datetime
) -> tuple[Project | None, int | None]:
    """(the project with this slug, the id of the annotator's oldest live lease in it or None), in one statement:
    pass both to assignment_lease_next. (None, None) when there is no such project."""
    rows = precompiled.fetch(
        _PROJECT_WITH_CURRENT_SQL,
        [annotator_id, connection.ops.adapt_datetimefield_value(now), slug],
        prepare=True,
    )
    if not rows:
        return None, None
    return precompiled.instance(Project, rows[0], ""), rows[0]["current_lease_id"]


_LOOK_UP = object()

# The lease in one statement on Postgres (labeling_lease_regular(), migration 0009: the same steps as
# _lease_regular, each inside the function with a fresh snapshot), then the leased comparison with its prompt and
# responses in a second one. Both run in autocommit: no BEGIN / COMMIT round trips.
_LEASE_REGULAR_SQL = (
    "SELECT assignment_id AS id, display_order, comparison_id "
    "FROM labeling_lease_regular(%s::bigint, %s::bigint, %s::timestamptz, %s::timestamptz, %s::integer, %s::integer)"
)
_COMPARISON_WITH_RESPONSES_SQL = (
    f"SELECT {precompiled.columns(Comparison, 'c', 'c_')}, "
    f"{precompiled.columns(Prompt, 'p', 'p_', only=_PROMPT_FIELDS)}, {precompiled.columns(Response, 'r', 'r_')} "
    f'FROM "{_C}" c JOIN "{_P}" p ON p.id = c.prompt_id JOIN "{_CR}" cr ON cr.comparison_id = c.id '
    f'JOIN "{_R}" r ON r.id = cr.response_id WHERE c.id = %s ORDER BY cr.position'
)


def hot_path_in_database() -> bool:
    """Whether regular leases and submissions are written by the Postgres functions labeling_lease_regular() and
    labeling_submit() (unless DB_HOT_PATH_FUNCTIONS is off)."""
    return connection.vendor == "postgresql" and settings.DB_HOT_PATH_FUNCTIONS


def _lease_regular_in_database(*, project: Project, annotator_id: int, now: datetime) -> Assignment | None:
    """_lease_regular in one statement (labeling_lease_regular), plus one to load what the payload shows."""
    until = now + timedelta(seconds=project.lease_seconds)
    params = [project.pk, annotator_id, now, until, project.overlap, _MAX_CANDIDATES]
    taken = precompiled.fetch(_LEASE_REGULAR_SQL, params, prepare=True)
    if not taken:
        return None
    rows = precompiled.fetch(_COMPARISON_WITH_RESPONSES_SQL, [taken[0]["comparison_id"]], prepare=True)
    comparison = precompiled.instance(Comparison, rows[0], "c_")
    comparison.prompt = precompiled.instance(Prompt, rows[0], "p_", only=_PROMPT_FIELDS)
    responses = [precompiled.instance(Response, row, "r_") for row in rows]
    leased = precompiled.instance(Assignment, taken[0], "", only=_TAKEN_FIELDS)
    # The instance _take would make (its values are ours, so its full_clean() has nothing to find).
    assignment = Assignment(
        pk=leased.pk,
        comparison=comparison,
        annotator_id=annotator_id,
        project=project,
        state=Assignment.State.LEASED,
        leased_at=now,
        leased_until=until,
        display_order=leased.display_order,
    )
    assignment._state.adding, assignment._state.db = False, connection.alias
    assignment.__dict__[_LOADED_RESPONSES] = {response.pk: response for response in responses}
    return assignment


def assignment_lease_next(
    *, project: Project, annotator, now: datetime | None = None, current_lease_id=_LOOK_UP
) -> Assignment | None:
    """The annotator's live lease if there is one (renewed), else a new lease on the next comparison, else None.

    `current_lease_id` (with the same `now`), when the caller read it already (project_with_current_lease): the
    lease this call would look up. The lookup runs before any transaction: it takes no lock either way (READ
    COMMITTED), and a lease another tab of the annotator takes meanwhile only means two live leases, as a lookup
    inside the transaction could also miss it."""
    now = now or timezone.now()
    annotator_id = annotator.pk
    if current_lease_id is _LOOK_UP:
        current_lease_id = _current_lease_id(project=project, annotator_id=annotator_id, now=now)
    if current_lease_id is not None:
        with transaction.atomic():
            current = _assignment_with_prompt(current_lease_id)
            current.leased_until = now + timedelta(seconds=project.lease_seconds)
            current.save(update_fields=["leased_until"])
            current.project = project
            return current
    gold = gold_due(project=project, annotator_id=annotator_id)
    if not gold and hot_path_in_database():
        return _lease_regular_in_database(project=project, annotator_id=annotator_id, now=now)
    with transaction.atomic():
        assignment = None
        if gold:
            assignment = _lease_gold(project=project, annotator_id=annotator_id, now=now)
        if assignment is None:
            if hot_path_in_database():
                return _lease_regular_in_database(project=project, annotator_id=annotator_id, now=now)
            assignment = _lease_regular(project=project, annotator_id=annotator_id, now=now)
        return assignment

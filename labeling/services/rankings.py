"""Submitting, undoing and skipping: the annotator's write paths. Every submission is validated here, so the
browser, the REST API and simulated annotators share one set of rules and one set of messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from core import precompiled
from labeling.models import Adjudication, Assignment, Comparison, Project, Ranking
from labeling.ranks import ranks_from_pairwise_choice, ranks_validate
from labeling.services.leasing import hot_path_in_database, insert_values, precompiled_insert, slots_taken

UNDO_WINDOW_SECONDS = 60
MAX_RATIONALE_CHARS = 5000
MAX_SKIP_REASON_CHARS = 300
SKIP_REASONS = {
    "unsure": "Not sure / outside my expertise",
    "too_long": "Too long to judge",
    "broken": "Broken item",
    "other": "Other",
}


_A, _C, _P = Assignment._meta.db_table, Comparison._meta.db_table, Project._meta.db_table
_ASSIGNMENT_SQL = (
    f"SELECT {precompiled.columns(Assignment, 'a', 'a_')}, {precompiled.columns(Comparison, 'c', 'c_')}, "
    f"{precompiled.columns(Project, 'p', 'p_')} "
    f'FROM "{_A}" a JOIN "{_C}" c ON c.id = a.comparison_id JOIN "{_P}" p ON p.id = a.project_id '
    "WHERE a.id = %s{lock}"
)
_R = Ranking._meta.db_table
_SUBMITTED, _COMPLETE = f"'{Assignment.State.SUBMITTED}'", f"'{Comparison.Status.COMPLETE}'"
# Every column but the id, in the order insert_values() gives their values.
_RANKING_INSERT = precompiled_insert(Ranking)
_RANKING_FIELDS = [field for field in Ranking._meta.concrete_fields if not field.primary_key]
_CLOSE_ASSIGNMENT_SQL = f'UPDATE "{_A}" SET state = {_SUBMITTED}, finished_at = %s WHERE id = %s'
# Marks the comparison complete once its rankings reach the overlap. The comparison row is locked by this
# transaction and every writer of its rankings locks it first, so the count (a snapshot taken after the lock) is
# current.
_COMPLETE_SQL = (
    f'UPDATE "{_C}" SET status = {_COMPLETE} WHERE id = %s AND status <> {_COMPLETE} '
    f'AND (SELECT COUNT(*) FROM "{_R}" r WHERE r.comparison_id = %s) {{plus}}>= %s'
)
# Postgres: the whole submission in one statement. The completion count runs on the statement's snapshot, which
# does not see the ranking inserted beside it: hence its `+ 1`.
_SUBMISSION_SQL = (
    f"WITH r AS ({_RANKING_INSERT} RETURNING id), a AS ({_CLOSE_ASSIGNMENT_SQL}){{complete}} "
    "SELECT (SELECT id FROM r), {completed}"
)


def _locked_assignment(
    *, assignment_id: int, annotator, lock_comparison: bool = False, lock: bool = True
) -> Assignment:
    """The annotator's assignment with its comparison and project, row-locked (and the comparison's row too with
    `lock_comparison`: one statement for both, assignment first, the order every writer of an assignment keeps);
    with `lock` False, read without a lock."""
    suffix = ""
    if (
        lock and connection.features.has_select_for_update
    ):  # SQLite: BEGIN IMMEDIATE already serialises writers.
        suffix = " FOR UPDATE OF a, c" if lock_comparison else " FOR UPDATE OF a"
    rows = precompiled.fetch(_ASSIGNMENT_SQL.format(lock=suffix), [assignment_id], prepare=True)
    if not rows or rows[0]["a_annotator_id"] != annotator.pk:
        raise PermissionDenied("This item is not assigned to you.")
    assignment = precompiled.instance(Assignment, rows[0], "a_")
    project = precompiled.instance(Project, rows[0], "p_")
    comparison = precompiled.instance(Comparison, rows[0], "c_")
    comparison.project = project  # an assignment's project is its comparison's
    assignment.comparison, assignment.project = comparison, project
    return assignment


def _lock_comparison(comparison_id: int) -> Comparison:
    queryset = Comparison.objects.all()
    if connection.features.has_select_for_update:
        queryset = queryset.select_for_update()
    return queryset.get(pk=comparison_id)


def _require_live_slot(*, assignment: Assignment, comparison: Comparison, now: datetime) -> None:
    """A lease that expired is still good if nobody took its slot meanwhile (the comparison row is locked)."""
    if assignment.leased_until > now or comparison.is_gold:
        return
    taken = slots_taken(comparison_id=comparison.pk, now=now, exclude_annotator_id=assignment.annotator_id)
    if taken >= assignment.project.overlap:
        raise ValidationError(
            {
                "__all__": "Your time on this item ran out and it went to another annotator. Here is the next one."
            }
        )


def ranking_extras_validate(*, flags: Iterable[str], rationale: str) -> list[str]:
    """The flags (sorted, known ones only) and the rationale's length, as a submission or an edit gives them."""
    flags = sorted(set(flags))
    unknown = [flag for flag in flags if flag not in Ranking.Flag.values]
    if unknown:
        raise ValidationError(
            {"flags": f"Unknown flag {unknown[0]!r}; use {', '.join(Ranking.Flag.values)}."}
        )
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise ValidationError({"rationale": f"Keep the rationale under {MAX_RATIONALE_CHARS} characters."})
    return flags


def ranking_submit(
    *,
    assignment_id: int,
    annotator,
    ranks: Mapping | None = None,
    choice: str | None = None,
    flags: Iterable[str] = (),
    rationale: str = "",
    now: datetime | None = None,
    assignment_read: Assignment | None = None,
) -> Ranking:
    """Record the annotator's ranking for their leased comparison.

    Give `choice` (a | b | tie | both_bad, relative to the displayed order) for a pairwise comparison or `ranks`
    ({response id: rank}) for any comparison. Raises ValidationError (nothing stored) or PermissionDenied.

    On Postgres (DB_HOT_PATH_FUNCTIONS) the assignment is read without a lock, the ranking validated, and
    labeling_submit() writes it in one statement if, under its lock, the lease is still live and what was validated
    still holds; otherwise, and elsewhere, the whole submission runs in a transaction that holds the locks.
    `assignment_read`: this assignment as the caller read it without a lock, with its comparison and project
    (project_with_own_assignment), so that the first read is not made again."""
    now = now or timezone.now()
    submission = dict(choice=choice, ranks=ranks, flags=flags, rationale=rationale, now=now)
    if hot_path_in_database():
        if assignment_read is not None and (assignment_read.pk, assignment_read.annotator_id) == (
            assignment_id,
            annotator.pk,
        ):
            assignment = assignment_read
        else:
            assignment = _locked_assignment(assignment_id=assignment_id, annotator=annotator, lock=False)
        ranking = _validated_ranking(assignment=assignment, annotator=annotator, **submission)
        if _submitted_in_database(ranking=ranking, assignment=assignment, now=now):
            return ranking
    return _ranking_submit_locked(assignment_id=assignment_id, annotator=annotator, **submission)


@transaction.atomic
def _ranking_submit_locked(*, assignment_id: int, annotator, now: datetime, **submission) -> Ranking:
    assignment = _locked_assignment(assignment_id=assignment_id, annotator=annotator, lock_comparison=True)
    ranking = _validated_ranking(assignment=assignment, annotator=annotator, now=now, **submission)
    comparison = assignment.comparison
    _require_live_slot(assignment=assignment, comparison=comparison, now=now)
    completes = not comparison.is_gold and comparison.status != Comparison.Status.COMPLETE
    completed = _record_submission(
        ranking=ranking,
        assignment=assignment,
        now=now,
        overlap=assignment.project.overlap if completes else None,
    )
    _mark_submitted(assignment, now=now, completed=completed)
    return ranking


def _mark_submitted(assignment: Assignment, *, now: datetime, completed: bool) -> None:
    assignment.state = Assignment.State.SUBMITTED
    assignment.finished_at = now
    if completed:
        assignment.comparison.status = Comparison.Status.COMPLETE


def _validated_ranking(
    *,
    assignment: Assignment,
    annotator,
    ranks: Mapping | None,
    choice: str | None,
    flags: Iterable[str],
    rationale: str,
    now: datetime,
) -> Ranking:
    """The ranking this submission makes of the assignment (not saved), or ValidationError."""
    if assignment.state == Assignment.State.SUBMITTED:
        raise ValidationError({"__all__": "You already submitted this item."})
    if assignment.state == Assignment.State.SKIPPED:
        raise ValidationError({"__all__": "You skipped this item."})
    comparison = assignment.comparison
    project: Project = assignment.project
    response_ids = [str(rid) for rid in assignment.display_order]

    both_bad = False
    if choice not in (None, ""):
        if comparison.k != 2:
            raise ValidationError({"choice": "Rank every response of this comparison."})
        dense, both_bad = ranks_from_pairwise_choice(
            choice=choice, display_order=assignment.display_order, allow_ties=project.allow_ties
        )
    elif ranks is not None:
        dense = ranks_validate(ranks=ranks, response_ids=response_ids, allow_ties=project.allow_ties)
    else:
        raise ValidationError({"ranks": "Rank the responses before submitting."})

    flags = ranking_extras_validate(flags=flags, rationale=rationale)
    ranking = Ranking(
        comparison=comparison,
        annotator=annotator,
        assignment=assignment,
        ranks=dense,
        both_bad=both_bad,
        flags=flags,
        rationale=rationale.strip(),
        seconds_spent=max(0.0, (now - assignment.leased_at).total_seconds()),
        display_order=assignment.display_order,
    )
    # The comparison and assignment rows are locked by the write that follows and the annotator is the caller: the
    # foreign-key existence checks of full_clean() (a query each) are left out.
    ranking.full_clean(
        exclude=["comparison", "annotator", "assignment"], validate_unique=False, validate_constraints=False
    )
    return ranking


_SUBMIT_FUNCTION_SQL = (
    "SELECT ranking_id, completed FROM labeling_submit(%s::bigint, %s::bigint, %s::timestamptz, %s::jsonb, "
    "%s::timestamptz, %s::integer, %s::jsonb, %s::boolean, %s::jsonb, %s::text, %s::double precision, "
    "%s::timestamptz)"
)


def _submitted_in_database(*, ranking: Ranking, assignment: Assignment, now: datetime) -> bool:
    """labeling_submit() (migration 0010): True when it wrote the submission, False when it found the lease
    expired or changed since the unlocked read and wrote nothing."""
    values = dict(zip((f.attname for f in _RANKING_FIELDS), insert_values(ranking), strict=True))
    params = [
        assignment.pk,
        ranking.annotator_id,
        assignment.leased_at,
        values["display_order"],
        now,
        assignment.project.overlap,
        values["ranks"],
        values["both_bad"],
        values["flags"],
        values["rationale"],
        values["seconds_spent"],
        values["created_at"],
    ]
    with precompiled.preparing(), connection.cursor() as cursor:
        cursor.execute(_SUBMIT_FUNCTION_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return False
    ranking.pk = row[0]
    ranking._state.adding, ranking._state.db = False, connection.alias
    _mark_submitted(assignment, now=now, completed=row[1])
    return True


def _record_submission(
    *, ranking: Ranking, assignment: Assignment, now: datetime, overlap: int | None
) -> bool:
    """Insert the ranking, mark its assignment submitted and (when `overlap` is given) its comparison complete if
    the rankings reach it: one statement on Postgres, three elsewhere. Returns whether the comparison completed."""
    values = insert_values(ranking)
    at = connection.ops.adapt_datetimefield_value(now)
    comparison_id = ranking.comparison_id
    with precompiled.preparing(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            complete, completed, params = "", "false", [*values, at, assignment.pk]
            if overlap is not None:
                complete = f", c AS ({_COMPLETE_SQL.format(plus='+ 1 ')} RETURNING 1)"
                completed = "EXISTS (SELECT 1 FROM c)"
                params += [comparison_id, comparison_id, overlap]
            cursor.execute(_SUBMISSION_SQL.format(complete=complete, completed=completed), params)
            ranking.pk, done = cursor.fetchone()
        else:
            cursor.execute(f"{_RANKING_INSERT} RETURNING id", values)
            ranking.pk = cursor.fetchone()[0]
            cursor.execute(_CLOSE_ASSIGNMENT_SQL, [at, assignment.pk])
            done = False
            if overlap is not None:
                cursor.execute(_COMPLETE_SQL.format(plus=""), [comparison_id, comparison_id, overlap])
                done = cursor.rowcount > 0
    ranking._state.adding, ranking._state.db = False, connection.alias
    return bool(done)


@transaction.atomic
def assignment_skip(*, assignment_id: int, annotator, reason: str, now: datetime | None = None) -> Assignment:
    """Give the item back with a reason; it returns to the pool and never comes back to this annotator."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why you skip this item."})
    if len(reason) > MAX_SKIP_REASON_CHARS:
        raise ValidationError({"reason": f"Keep the reason under {MAX_SKIP_REASON_CHARS} characters."})
    assignment = _locked_assignment(assignment_id=assignment_id, annotator=annotator)
    if assignment.state != Assignment.State.LEASED:
        raise ValidationError({"__all__": "This item is no longer yours to skip."})
    assignment.state = Assignment.State.SKIPPED
    assignment.skip_reason = SKIP_REASONS.get(reason, reason)
    assignment.finished_at = now
    assignment.full_clean(validate_unique=False, validate_constraints=False)
    assignment.save(update_fields=["state", "skip_reason", "finished_at"])
    return assignment


def last_ranking_sql(prefix: str) -> str:
    """The annotator's last ranking in a project (params: annotator id, project id), its columns prefixed, and
    whether its comparison was adjudicated: the undo button, shown after every keypress. Driven from the
    (annotator, created_at) index, each ranking's project looked up by primary key in a correlated scalar
    subquery: joined with the project's comparisons, under stale statistics Postgres planned a nested loop over
    all of them for each of the annotator's rankings."""
    return (
        f'SELECT {precompiled.columns(Ranking, "r", prefix)}, EXISTS (SELECT 1 FROM "{Adjudication._meta.db_table}" '
        f'j WHERE j.comparison_id = r.comparison_id) AS adjudicated FROM "{_R}" r WHERE r.annotator_id = %s '
        f'AND (SELECT c.project_id FROM "{_C}" c WHERE c.id = r.comparison_id) = %s '
        "ORDER BY r.created_at DESC, r.id DESC LIMIT 1"
    )


_LAST_RANKING_SQL = last_ranking_sql("")


def ranking_undo_open(*, created_at: datetime, adjudicated: bool, now: datetime) -> bool:
    """Whether a ranking made at `created_at` can still be undone at `now`: inside the window, not adjudicated."""
    return not adjudicated and created_at >= now - timedelta(seconds=UNDO_WINDOW_SECONDS)


def ranking_undoable(*, project: Project, annotator, now: datetime | None = None) -> Ranking | None:
    """The annotator's last ranking in this project while it can still be undone (not once adjudicated)."""
    now = now or timezone.now()
    rows = precompiled.fetch(_LAST_RANKING_SQL, [annotator.pk, project.pk])
    if not rows:
        return None
    ranking = precompiled.instance(Ranking, rows[0], "")
    return (
        ranking
        if ranking_undo_open(created_at=ranking.created_at, adjudicated=rows[0]["adjudicated"], now=now)
        else None
    )


@transaction.atomic
def ranking_undo_last(*, project: Project, annotator, now: datetime | None = None) -> Assignment:
    """Withdraw the annotator's last ranking (within the undo window) and lease its comparison to them again."""
    now = now or timezone.now()
    ranking = ranking_undoable(project=project, annotator=annotator, now=now)
    if ranking is None:
        raise ValidationError(
            {"__all__": f"Nothing to undo: only the last {UNDO_WINDOW_SECONDS} s can be undone."}
        )
    comparison = _lock_comparison(ranking.comparison_id)
    assignment = _locked_assignment(assignment_id=ranking.assignment_id, annotator=annotator)
    ranking.delete()
    assignment.state = Assignment.State.LEASED
    assignment.finished_at = None
    assignment.leased_at = now
    assignment.leased_until = now + timedelta(seconds=project.lease_seconds)
    assignment.save(update_fields=["state", "finished_at", "leased_at", "leased_until"])
    if comparison.status == Comparison.Status.COMPLETE:
        comparison.status = Comparison.Status.OPEN
        comparison.save(update_fields=["status"])
    return assignment

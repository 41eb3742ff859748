"""Read paths of the annotator loop: what to show, progress, one's own history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core import precompiled
from labeling.models import Assignment, Comparison, Project, Ranking, Response
from labeling.services.leasing import other_live_lease_sql, responses_loaded_with
from labeling.services.ranking_edits import ranking_editable
from labeling.services.rankings import last_ranking_sql, ranking_undo_open

LETTERS = "ABCDEFGH"


_PROJECT_SQL = (
    f'SELECT {precompiled.columns(Project, "p", "")} FROM "{Project._meta.db_table}" p WHERE p.slug = %s'
)


def project_for_slug(*, slug: str) -> Project | None:
    """The project with this slug (precompiled SQL: the annotator loop looks it up on every request)."""
    rows = precompiled.fetch(_PROJECT_SQL, [slug])
    return precompiled.instance(Project, rows[0], "") if rows else None


_PROJECT_WITH_OWN_SQL = (
    f"SELECT {precompiled.columns(Project, 'p', 'p_')}, {precompiled.columns(Assignment, 'a', 'a_')}, "
    f"{precompiled.columns(Comparison, 'c', 'c_')}, ({other_live_lease_sql(project='p.id')}) AS other_lease_id "
    f'FROM "{Project._meta.db_table}" p LEFT JOIN "{Assignment._meta.db_table}" a '
    "ON a.id = %s AND a.project_id = p.id AND a.annotator_id = %s "
    f'LEFT JOIN "{Comparison._meta.db_table}" c ON c.id = a.comparison_id WHERE p.slug = %s'
)


class OwnAssignment(NamedTuple):
    project: Project | None
    # The annotator's assignment in the project, read without a lock, with its comparison and project set.
    assignment: Assignment | None
    # The annotator's oldest live lease in the project other than this assignment, at the `now` asked about.
    other_lease_id: int | None


def project_with_own_assignment(*, slug: str, assignment_id: int, annotator, now: datetime) -> OwnAssignment:
    """What an htmx submit or skip asks first, in one statement: the project with this slug (None without one),
    the annotator's assignment with this id in it (None when it is not theirs or not in it) and their oldest other
    live lease (pass it and `now` to assignment_lease_next once the assignment is submitted or skipped)."""
    if not 0 < assignment_id < 2**63:  # a URL's <int:…> can exceed bigint; the ORM answers None for it too
        return OwnAssignment(project_for_slug(slug=slug), None, None)
    at = connection.ops.adapt_datetimefield_value(now)
    rows = precompiled.fetch(
        _PROJECT_WITH_OWN_SQL, [annotator.pk, at, assignment_id, assignment_id, annotator.pk, slug]
    )
    if not rows:
        return OwnAssignment(None, None, None)
    row = rows[0]
    project = precompiled.instance(Project, row, "p_")
    if row["a_id"] is None:
        return OwnAssignment(project, None, row["other_lease_id"])
    assignment = precompiled.instance(Assignment, row, "a_")
    comparison = precompiled.instance(Comparison, row, "c_")
    comparison.project = assignment.project = project
    assignment.comparison = comparison
    return OwnAssignment(project, assignment, row["other_lease_id"])


@dataclass(frozen=True)
class ShownResponse:
    response: Response
    letter: str
    position: int  # 1-based, in the order shown to this annotator


def assignment_responses(*, assignment: Assignment) -> list[ShownResponse]:
    """The comparison's responses in this assignment's (shuffled) display order."""
    by_id = responses_loaded_with(assignment)
    if by_id is None:
        by_id = {r.id: r for r in Response.objects.filter(id__in=assignment.display_order)}
    return [
        ShownResponse(response=by_id[rid], letter=LETTERS[index], position=index + 1)
        for index, rid in enumerate(assignment.display_order)
    ]


@dataclass(frozen=True)
class Progress:
    done_today: int
    done_total: int
    left: int


_A, _C, _R = Assignment._meta.db_table, Comparison._meta.db_table, Ranking._meta.db_table
_LEASED, _SUBMITTED, _SKIPPED = (f"'{state}'" for state in Assignment.State.values)
_OPEN = f"'{Comparison.Status.OPEN}'"

# Every statement below is driven from the annotator's own rows (their rankings through the (annotator,
# created_at) index, their finished assignments, the project's live leases through its partial index) and looks
# each comparison up by primary key in a correlated scalar subquery, which Postgres always runs per outer row. The
# earlier joins of rankings with the project's comparisons were planned, under stale statistics (a table growing
# faster than autovacuum analyses it), as nested loops over every comparison of the project for every ranking of
# the annotator: the htmx keypress's Postgres CPU grew with the annotator's history (12 → 28 ms over 300 items).
_IN_PROJECT = f'(SELECT c.project_id FROM "{_C}" c WHERE c.id = r.comparison_id) = %s'
_MY_RANKINGS = f'"{_R}" r WHERE r.annotator_id = %s AND {_IN_PROJECT}'
_DONE_SQL = (
    f"SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE r.created_at >= %s) AS today FROM {_MY_RANKINGS}"
)
# Open regular comparisons less those the annotator cannot take. Only comparisons with a live lease or one of
# their finished assignments can be unavailable: submitting marks a comparison complete once its rankings reach
# the overlap, so an open one has fewer rankings than slots. Tests hold `left` to regular_candidates(…).count().
_OPEN_SQL = f'SELECT COUNT(*) FROM "{_C}" q WHERE q.project_id = %s AND q.status = {_OPEN} AND NOT q.is_gold'
_UNAVAILABLE_SQL = (
    f'SELECT COUNT(*) FROM (SELECT t.comparison_id FROM "{_A}" t WHERE t.annotator_id = %s AND t.project_id = %s '
    f'AND t.state IN ({_SUBMITTED}, {_SKIPPED}) UNION SELECT t.comparison_id FROM "{_A}" t WHERE t.project_id = %s '
    f"AND t.state = {_LEASED} AND t.leased_until > %s) u "
    f'WHERE (SELECT q.project_id = %s AND q.status = {_OPEN} AND NOT q.is_gold FROM "{_C}" q '
    "WHERE q.id = u.comparison_id) "
    f'AND (EXISTS (SELECT 1 FROM "{_A}" d WHERE d.comparison_id = u.comparison_id AND d.annotator_id = %s '
    f"AND d.state IN ({_SUBMITTED}, {_SKIPPED})) "
    f'OR (SELECT COUNT(*) FROM "{_A}" s WHERE s.comparison_id = u.comparison_id AND s.annotator_id <> %s '
    f"AND (s.state = {_SUBMITTED} OR (s.state = {_LEASED} AND s.leased_until > %s))) >= %s)"
)
_LAST_SQL = last_ranking_sql("r_")
_COUNTS = f"done.total, done.today, ({_OPEN_SQL}) AS open, ({_UNAVAILABLE_SQL}) AS unavailable"
_PROGRESS_SQL = f"SELECT {_COUNTS} FROM ({_DONE_SQL}) done"
# What the htmx partial shows after every keypress (progress and the undo button) in one statement.
_WORKSPACE_STATE_SQL = (
    f"SELECT {_COUNTS}, last.* FROM ({_DONE_SQL}) done LEFT JOIN ({_LAST_SQL}) last ON 1 = 1"
)


def _progress_params(*, project: Project, annotator_id: int, now: datetime) -> list:
    start_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    at = connection.ops.adapt_datetimefield_value
    me, pid = annotator_id, project.pk
    return [
        *(pid, me, pid, pid, at(now), pid, me, me, at(now), project.overlap),  # open, unavailable
        *(at(start_of_day), me, pid),  # done
    ]


def _progress(row: dict) -> Progress:
    return Progress(done_today=row["today"], done_total=row["total"], left=row["open"] - row["unavailable"])


def annotator_progress(*, project: Project, annotator, now: datetime | None = None) -> Progress:
    """Rankings today and in all, and how many comparisons are left for this annotator: as many as
    regular_candidates(…).count(), without testing every open comparison (that cost grew with the project)."""
    now = now or timezone.now()
    [row] = precompiled.fetch(
        _PROGRESS_SQL, _progress_params(project=project, annotator_id=annotator.pk, now=now)
    )
    return _progress(row)


@dataclass(frozen=True)
class WorkspaceState:
    """What the annotator's workspace shows around the item: their progress, and the ranking the undo button
    would withdraw (None when there is nothing they may undo)."""

    progress: Progress
    undoable: Ranking | None


def annotator_workspace_state(*, project: Project, annotator, now: datetime | None = None) -> WorkspaceState:
    """annotator_progress(…) and ranking_undoable(…) in one statement (the htmx partial asks after every
    keypress)."""
    now = now or timezone.now()
    params = _progress_params(project=project, annotator_id=annotator.pk, now=now)
    [row] = precompiled.fetch(_WORKSPACE_STATE_SQL, [*params, annotator.pk, project.pk])
    undoable = None
    if row["r_id"] is not None:
        ranking = precompiled.instance(Ranking, row, "r_")
        if ranking_undo_open(created_at=ranking.created_at, adjudicated=row["adjudicated"], now=now):
            undoable = ranking
    return WorkspaceState(progress=_progress(row), undoable=undoable)


def annotator_work(*, annotator, now: datetime | None = None) -> list[tuple[Project, Progress]]:
    """Every project with this annotator's progress in it: what their home page offers to start on."""
    return [
        (project, annotator_progress(project=project, annotator=annotator, now=now))
        for project in Project.objects.order_by("name")
    ]


def sole_project_slug() -> str | None:
    """The slug of the only project, when there is exactly one: forms preselect it (nothing to choose)."""
    slugs = list(Project.objects.order_by("slug").values_list("slug", flat=True)[:2])
    return slugs[0] if len(slugs) == 1 else None


def projects_for_annotator(*, annotator) -> QuerySet[Project]:
    return Project.objects.annotate(
        open_comparisons=Count(
            "comparisons", filter=Q(comparisons__status=Comparison.Status.OPEN, comparisons__is_gold=False)
        )
    ).order_by("slug")


@dataclass(frozen=True)
class RankingShown:
    """One of the annotator's rankings as "your rankings" shows it: the texts in the order they saw them."""

    ranking: Ranking
    responses: list[tuple[ShownResponse, int]]  # display order, with the rank this annotator gave
    editable: bool
    pairwise: bool


def ranking_shown(
    *, ranking: Ranking, responses: dict[int, Response], now: datetime | None = None
) -> RankingShown:
    shown = [
        (
            ShownResponse(response=responses[rid], letter=LETTERS[index], position=index + 1),
            ranking.ranks[str(rid)],
        )
        for index, rid in enumerate(ranking.display_order)
    ]
    return RankingShown(
        ranking=ranking,
        responses=shown,
        editable=ranking_editable(ranking=ranking, now=now),
        pairwise=len(shown) == 2,
    )


def annotator_rankings_shown(*, project: Project, annotator, limit: int = 100) -> list[RankingShown]:
    """The annotator's rankings, newest first, with prompt and response texts (two queries for the texts)."""
    rankings = list(annotator_rankings(project=project, annotator=annotator, limit=limit))
    ids = {rid for ranking in rankings for rid in ranking.display_order}
    responses = Response.objects.in_bulk(ids)
    now = timezone.now()
    return [ranking_shown(ranking=ranking, responses=responses, now=now) for ranking in rankings]


def annotator_rankings(*, project: Project, annotator, limit: int = 100) -> QuerySet[Ranking]:
    """Only this annotator's own rankings, newest first."""
    return (
        Ranking.objects.filter(comparison__project=project, annotator=annotator)
        .select_related("comparison__prompt")
        .order_by("-created_at", "-id")[:limit]
    )

"""Read paths of the annotator loop: what to show, progress, one's own history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core import precompiled
from labeling.models import Assignment, Comparison, Project, Ranking, Response
from labeling.services.leasing import responses_loaded_with
from labeling.services.ranking_edits import ranking_editable

LETTERS = "ABCDEFGH"


_PROJECT_SQL = (
    f'SELECT {precompiled.columns(Project, "p", "")} FROM "{Project._meta.db_table}" p WHERE p.slug = %s'
)


def project_for_slug(*, slug: str) -> Project | None:
    """The project with this slug (precompiled SQL: the annotator loop looks it up on every request)."""
    rows = precompiled.fetch(_PROJECT_SQL, [slug])
    return precompiled.instance(Project, rows[0], "") if rows else None


_OWN_ASSIGNMENT_SQL = (
    f'SELECT {precompiled.columns(Assignment, "a", "")} FROM "{Assignment._meta.db_table}" a '
    "WHERE a.id = %s AND a.project_id = %s AND a.annotator_id = %s"
)


def assignment_own(*, assignment_id: int, project: Project, annotator) -> Assignment | None:
    """The annotator's assignment with this id in this project, else None (precompiled: every keypress asks)."""
    if not 0 < assignment_id < 2**63:  # a URL's <int:…> can exceed bigint; the ORM answers None for it too
        return None
    rows = precompiled.fetch(_OWN_ASSIGNMENT_SQL, [assignment_id, project.pk, annotator.pk])
    return precompiled.instance(Assignment, rows[0], "") if rows else None


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
_OPEN_REGULAR = f"q.project_id = %s AND q.status = '{Comparison.Status.OPEN}' AND NOT q.is_gold"
# The annotator's progress in one statement (it is shown after every keypress): their rankings in the project (in
# all, and since the start of the day), and the open regular comparisons less those they cannot take. Only
# comparisons with a live lease or one of their finished assignments can be unavailable: submitting marks a
# comparison complete once its rankings reach the overlap, so an open one has fewer rankings than slots. Tests
# hold `left` to regular_candidates(…).count() (leasing).
_PROGRESS_SQL = (
    "SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE r.created_at >= %s) AS today, "
    f'(SELECT COUNT(*) FROM "{_C}" q WHERE {_OPEN_REGULAR}) AS open, '
    f'(SELECT COUNT(*) FROM "{_C}" q WHERE {_OPEN_REGULAR} AND q.id IN (SELECT t.comparison_id FROM "{_A}" t '
    f"WHERE t.project_id = %s AND ((t.annotator_id = %s AND t.state IN ({_SUBMITTED}, {_SKIPPED})) "
    f"OR (t.state = {_LEASED} AND t.leased_until > %s))) "
    f'AND (EXISTS (SELECT 1 FROM "{_A}" d WHERE d.comparison_id = q.id AND d.annotator_id = %s '
    f"AND d.state IN ({_SUBMITTED}, {_SKIPPED})) "
    f'OR (SELECT COUNT(*) FROM "{_A}" s WHERE s.comparison_id = q.id AND s.annotator_id <> %s '
    f"AND (s.state = {_SUBMITTED} OR (s.state = {_LEASED} AND s.leased_until > %s))) >= %s)) AS unavailable "
    f'FROM "{_R}" r JOIN "{_C}" c ON c.id = r.comparison_id WHERE c.project_id = %s AND r.annotator_id = %s'
)


def annotator_progress(*, project: Project, annotator, now: datetime | None = None) -> Progress:
    """Rankings today and in all, and how many comparisons are left for this annotator: as many as
    regular_candidates(…).count(), without testing every open comparison (that cost grew with the project)."""
    now = now or timezone.now()
    start_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    at = connection.ops.adapt_datetimefield_value
    me = annotator.pk
    [row] = precompiled.fetch(
        _PROGRESS_SQL,
        [at(start_of_day), project.pk, project.pk, project.pk, me, at(now), me, me, at(now)]
        + [project.overlap, project.pk, me],
    )
    return Progress(done_today=row["today"], done_total=row["total"], left=row["open"] - row["unavailable"])


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

"""Read paths of the annotator loop: what to show, progress, one's own history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core import precompiled
from labeling.models import Assignment, Comparison, Project, Ranking, Response
from labeling.services.leasing import regular_open, regular_unavailable, responses_loaded_with
from labeling.services.ranking_edits import ranking_editable

LETTERS = "ABCDEFGH"


_PROJECT_SQL = (
    f'SELECT {precompiled.columns(Project, "p", "")} FROM "{Project._meta.db_table}" p WHERE p.slug = %s'
)


def project_for_slug(*, slug: str) -> Project | None:
    """The project with this slug (precompiled SQL: the annotator loop looks it up on every request)."""
    rows = precompiled.fetch(_PROJECT_SQL, [slug])
    return precompiled.instance(Project, rows[0], "") if rows else None


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


def annotator_progress(*, project: Project, annotator, now: datetime | None = None) -> Progress:
    now = now or timezone.now()
    start_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = Ranking.objects.filter(comparison__project=project, annotator=annotator).aggregate(
        total=Count("id"), today=Count("id", filter=Q(created_at__gte=start_of_day))
    )
    left = regular_left_count(project=project, annotator_id=annotator.pk, now=now)
    return Progress(done_today=counts["today"], done_total=counts["total"], left=left)


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


def regular_left_count(*, project: Project, annotator_id: int, now: datetime) -> int:
    """regular_candidates(…).count(), without testing every open comparison (that cost grew with the project and
    ran on every keypress): all open items, less those this annotator finished or others fill. Only comparisons
    with a live lease or one of this annotator's finished assignments can be excluded, because submitting marks a
    comparison complete once its rankings reach the overlap (an open one has fewer)."""
    touched = Assignment.objects.filter(project=project).filter(
        Q(annotator_id=annotator_id, state__in=[Assignment.State.SUBMITTED, Assignment.State.SKIPPED])
        | Q(state=Assignment.State.LEASED, leased_until__gt=now)
    )
    unavailable = regular_unavailable(project=project, annotator_id=annotator_id, now=now).filter(
        pk__in=touched.values("comparison_id")
    )
    return regular_open(project=project).count() - unavailable.count()


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

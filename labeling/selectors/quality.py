"""Quality read paths: agreement, gold accuracy and trust, the admin dashboard, the review queue."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from labeling.agreement import (
    GoldStats,
    PercentAgreement,
    comparison_percent_agreement,
    gold_stats,
    majority_agreement,
    pairwise_percent_agreement,
    ranking_alpha,
)
from labeling.models import Assignment, Comparison, Project, Prompt, Ranking, Response


def project_ranking_rows(*, project: Project) -> list[tuple[int, int, dict]]:
    """(comparison id, annotator id, ranks) of every non-gold ranking of the project."""
    return list(
        Ranking.objects.filter(comparison__project=project, comparison__is_gold=False)
        .order_by("comparison_id", "annotator_id")
        .values_list("comparison_id", "annotator_id", "ranks")
    )


def project_gold_stats(*, project: Project) -> dict[int, GoldStats]:
    rows = Ranking.objects.filter(comparison__project=project, comparison__is_gold=True).values_list(
        "annotator_id", "ranks", "comparison__expected_ranks"
    )
    return gold_stats(rows)


def qualified_annotator_ids(*, project: Project) -> set[int]:
    """Annotators whose trust score reaches the project's threshold (for 'gold-qualified only' exports)."""
    return {
        aid
        for aid, stats in project_gold_stats(project=project).items()
        if stats.trust >= project.trust_threshold
    }


@dataclass(frozen=True)
class ProjectAgreement:
    alpha: float | None
    percent: PercentAgreement


def project_agreement(*, project: Project) -> ProjectAgreement:
    rows = project_ranking_rows(project=project)
    return ProjectAgreement(alpha=ranking_alpha(rows), percent=pairwise_percent_agreement(rows))


@dataclass(frozen=True)
class AnnotatorRow:
    annotator_id: int
    username: str
    rankings: int
    skipped: int
    median_seconds: float | None
    gold: GoldStats | None
    majority: PercentAgreement | None
    trust: float
    qualified: bool


def annotator_table(*, project: Project) -> list[AnnotatorRow]:
    User = get_user_model()
    gold = project_gold_stats(project=project)
    majority = majority_agreement(project_ranking_rows(project=project))
    seconds: dict[int, list[float]] = {}
    for annotator_id, spent in Ranking.objects.filter(comparison__project=project).values_list(
        "annotator_id", "seconds_spent"
    ):
        seconds.setdefault(annotator_id, []).append(spent)
    counts = (
        Assignment.objects.filter(project=project)
        .values("annotator_id")
        .annotate(
            submitted=Count("id", filter=Q(state=Assignment.State.SUBMITTED)),
            skipped=Count("id", filter=Q(state=Assignment.State.SKIPPED)),
        )
    )
    names = dict(
        User.objects.filter(assignments__project=project).distinct().values_list("id", User.USERNAME_FIELD)
    )
    rows = []
    for entry in counts:
        aid = entry["annotator_id"]
        stats = gold.get(aid)
        trust = stats.trust if stats else GoldStats(0, 0.0).trust
        rows.append(
            AnnotatorRow(
                annotator_id=aid,
                username=names.get(aid, str(aid)),
                rankings=entry["submitted"],
                skipped=entry["skipped"],
                median_seconds=statistics.median(seconds[aid]) if seconds.get(aid) else None,
                gold=stats,
                majority=majority.get(aid),
                trust=trust,
                qualified=trust >= project.trust_threshold,
            )
        )
    return sorted(rows, key=lambda row: (-row.rankings, row.username))


def project_counts(*, project: Project) -> dict[str, int]:
    comparisons = Comparison.objects.filter(project=project).aggregate(
        total=Count("id"),
        gold=Count("id", filter=Q(is_gold=True)),
        complete=Count("id", filter=Q(status=Comparison.Status.COMPLETE)),
        adjudicated=Count("id", filter=Q(adjudication__isnull=False)),
    )
    return {
        "prompts": Prompt.objects.filter(project=project).count(),
        "responses": Response.objects.filter(prompt__project=project).count(),
        "comparisons": comparisons["total"],
        "gold": comparisons["gold"],
        "complete": comparisons["complete"],
        "adjudicated": comparisons["adjudicated"],
        "rankings": Ranking.objects.filter(comparison__project=project).count(),
        "skips": Assignment.objects.filter(project=project, state=Assignment.State.SKIPPED).count(),
    }


def throughput_per_day(*, project: Project, days: int = 14) -> list[tuple[object, int]]:
    since = timezone.now() - timedelta(days=days)
    rows = (
        Ranking.objects.filter(comparison__project=project, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"))
        .order_by("day")
    )
    return [(row["day"], row["n"]) for row in rows]


def flagged_rankings(*, project: Project, limit: int = 50):
    return (
        Ranking.objects.filter(comparison__project=project)
        .filter(~Q(flags=[]) | Q(both_bad=True))
        .select_related("annotator", "comparison__prompt")
        .order_by("-created_at")[:limit]
    )


@dataclass(frozen=True)
class ReviewItem:
    comparison: Comparison
    agreement: float
    rankings: int


def review_queue(*, project: Project, include_adjudicated: bool = False) -> list[ReviewItem]:
    """Comparisons whose annotators disagree (pairwise percent agreement below 1), worst first."""
    per_comparison = comparison_percent_agreement(project_ranking_rows(project=project))
    disagreeing = {cid: pa for cid, pa in per_comparison.items() if pa.value is not None and pa.value < 1.0}
    queryset = Comparison.objects.filter(id__in=disagreeing).select_related("prompt", "adjudication")
    if not include_adjudicated:
        queryset = queryset.filter(adjudication__isnull=True)
    counts = dict(
        Ranking.objects.filter(comparison_id__in=disagreeing)
        .values("comparison_id")
        .annotate(n=Count("id"))
        .values_list("comparison_id", "n")
    )
    items = [ReviewItem(c, disagreeing[c.id].value, counts.get(c.id, 0)) for c in queryset]
    return sorted(items, key=lambda item: (item.agreement, item.comparison.id))


def next_disagreement(*, project: Project, after: Comparison | None = None) -> Comparison | None:
    """The worst disagreement still waiting for a final ranking, other than `after` (the one just settled)."""
    for item in review_queue(project=project):
        if after is None or item.comparison.id != after.id:
            return item.comparison
    return None

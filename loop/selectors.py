"""Read paths of the loop: leaderboard outcomes from human rankings, sampling jobs."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from labeling.models import Project, Ranking, Response
from loop import bradley_terry


def model_label(response: Response) -> str:
    if response.model_version_id:
        return f"#{response.model_version_id} {response.model_version.name}"
    return f"external: {response.source_name}"


def ranking_outcomes(*, project: Project) -> list[bradley_terry.Outcome]:
    """Every pair of differently-sourced responses inside every ranking, as one game (ties are half wins)."""
    rankings = Ranking.objects.filter(comparison__project=project, comparison__is_gold=False).order_by("id")
    response_ids = {int(rid) for ranks in rankings.values_list("ranks", flat=True) for rid in ranks}
    labels = {
        r.pk: model_label(r)
        for r in Response.objects.filter(pk__in=response_ids).select_related("model_version")
    }
    outcomes: list[bradley_terry.Outcome] = []
    for ranks in rankings.values_list("ranks", flat=True).iterator(chunk_size=2000):
        items = sorted((int(rid), rank) for rid, rank in ranks.items())
        for (first, first_rank), (second, second_rank) in combinations(items, 2):
            if labels[first] == labels[second]:
                continue
            score = 1.0 if first_rank < second_rank else 0.0 if first_rank > second_rank else 0.5
            outcomes.append(bradley_terry.Outcome(labels[first], labels[second], score))
    return outcomes


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[bradley_terry.Rating]
    win_rates: dict[tuple[str, str], tuple[float, int]]
    games: int

    @property
    def models(self) -> list[str]:
        return [rating.model for rating in self.ratings]


def leaderboard(*, project: Project, bootstrap: int = 200, seed: int = 0) -> Leaderboard:
    outcomes = ranking_outcomes(project=project)
    return Leaderboard(
        ratings=bradley_terry.rate(outcomes, bootstrap=bootstrap, seed=seed),
        win_rates=bradley_terry.win_rates(outcomes),
        games=len(outcomes),
    )

"""Read paths of the loop: leaderboard outcomes from human rankings, sampling jobs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


# Fewer games than this and a rating is preliminary (as Chatbot Arena marks new models): shown, but ranked below
# every established entry, so one lucky game cannot put a model on top.
PRELIMINARY_BELOW_GAMES = 20


@dataclass(frozen=True)
class LeaderboardRow:
    model: str
    rating: bradley_terry.Rating | None  # None: no game yet (the base model before its first comparison)
    games: int
    preliminary: bool
    rank: int | None  # among established entries only
    is_base: bool
    vs_base: tuple[float, int] | None  # (win rate over the base model, games against it)


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[bradley_terry.Rating]
    win_rates: dict[tuple[str, str], tuple[float, int]]
    games: int
    rows: list[LeaderboardRow] = field(default_factory=list)
    base: str | None = None

    @property
    def models(self) -> list[str]:
        return [rating.model for rating in self.ratings]


def base_model_label(*, project: Project) -> str | None:
    """The model every round is measured against: the lineage root of the project's model answers, else the
    registry's first policy (the bundled base model)."""
    from training.models import ModelVersion

    answered = (
        Response.objects.filter(prompt__project=project, model_version__isnull=False)
        .select_related("model_version__base")
        .order_by("model_version_id")
        .first()
    )
    if answered is not None:
        version = answered.model_version.base or answered.model_version
    else:
        version = ModelVersion.objects.filter(kind="policy", parent__isnull=True).order_by("id").first()
    if version is None:
        return None
    return f"#{version.pk} {version.name}"


def leaderboard_rows(
    *, ratings: list[bradley_terry.Rating], win_rates: dict, base: str | None, min_games: int
) -> list[LeaderboardRow]:
    """Established entries by rating, then preliminary ones by rating, then the base model if it never played."""

    def row(rating: bradley_terry.Rating | None, model: str) -> LeaderboardRow:
        games = rating.games if rating else 0
        return LeaderboardRow(
            model=model, rating=rating, games=games, preliminary=games < min_games, rank=None,
            is_base=model == base, vs_base=win_rates.get((model, base)) if base and model != base else None,
        )  # fmt: skip

    rows = [row(rating, rating.model) for rating in ratings]
    rows.sort(key=lambda r: (r.preliminary, -r.rating.elo))
    ranked = []
    for position, entry in enumerate((r for r in rows if not r.preliminary), start=1):
        ranked.append(replace(entry, rank=position))
    rows = ranked + [r for r in rows if r.preliminary]
    if base is not None and all(r.model != base for r in rows):
        rows.append(row(None, base))
    return rows


def leaderboard(
    *, project: Project, bootstrap: int = 200, seed: int = 0, min_games: int = PRELIMINARY_BELOW_GAMES
) -> Leaderboard:
    outcomes = ranking_outcomes(project=project)
    ratings = bradley_terry.rate(outcomes, bootstrap=bootstrap, seed=seed)
    win_rates = bradley_terry.win_rates(outcomes)
    base = base_model_label(project=project)
    return Leaderboard(
        ratings=ratings, win_rates=win_rates, games=len(outcomes), base=base,
        rows=leaderboard_rows(ratings=ratings, win_rates=win_rates, base=base, min_games=min_games),
    )  # fmt: skip

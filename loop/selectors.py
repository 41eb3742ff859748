"""Read paths of the loop: leaderboard outcomes from human rankings, sampling jobs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import combinations

from django.db.models import Count, Q

from labeling.models import ComparisonResponse, Project, Ranking, Response
from loop import bradley_terry
from registry.models import ModelVersion
from registry.selectors import root_policies


def version_label(version) -> str:
    return f"#{version.pk} {version.name}"


def model_label(response: Response) -> str:
    if response.model_version_id:
        return version_label(response.model_version)
    return f"external: {response.source_name}"


def ranking_outcomes(*, project: Project) -> list[bradley_terry.Outcome]:
    """Every pair of differently-sourced responses inside every ranking, as one game (ties are half wins)."""
    return outcomes_of(
        rankings=Ranking.objects.filter(comparison__project=project, comparison__is_gold=False)
    )


def outcomes_of(*, rankings) -> list[bradley_terry.Outcome]:
    rankings = rankings.order_by("id")
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
class PolicyRecord:
    """How a policy did with people: its samples (how many were cut off) and its games in human rankings."""

    samples: int
    truncated: int
    wins: float
    games: int

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.games if self.games else None


def policy_records(*, versions) -> dict[int, PolicyRecord]:
    """Samples and win rate (against any other source, ties half) of each policy, over every project."""
    ids = [v.pk for v in versions if v.kind == ModelVersion.Kind.POLICY]
    samples = {
        row["model_version_id"]: row
        for row in Response.objects.filter(model_version_id__in=ids)
        .values("model_version_id")
        .annotate(n=Count("id"), cut=Count("id", filter=Q(generation_params__truncated=True)))
    }
    with_policies = ComparisonResponse.objects.filter(response__model_version_id__in=ids).values(
        "comparison_id"
    )
    outcomes = outcomes_of(
        rankings=Ranking.objects.filter(comparison_id__in=with_policies, comparison__is_gold=False)
    )
    scores: dict[str, list[float]] = {}
    for outcome in outcomes:
        for label, score in ((outcome.first, outcome.score), (outcome.second, 1 - outcome.score)):
            tally = scores.setdefault(label, [0.0, 0])
            tally[0] += score
            tally[1] += 1
    records = {}
    for version in versions:
        if version.pk not in ids:
            continue
        wins, games = scores.get(version_label(version), (0.0, 0))
        row = samples.get(version.pk, {"n": 0, "cut": 0})
        records[version.pk] = PolicyRecord(
            samples=row["n"], truncated=row["cut"], wins=wins, games=int(games)
        )
    return records


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
    answered = (
        Response.objects.filter(prompt__project=project, model_version__isnull=False)
        .select_related("model_version__base")
        .order_by("model_version_id")
        .first()
    )
    if answered is not None:
        version = answered.model_version.base or answered.model_version
    else:
        version = root_policies().order_by("id").first()
    return version_label(version) if version is not None else None


def leaderboard_rows(
    *, ratings: list[bradley_terry.Rating], win_rates: dict, base: str | None, min_games: int
) -> list[LeaderboardRow]:
    """Established entries by rating, then preliminary ones by rating, then the base model if it never played."""

    def row(rating: bradley_terry.Rating | None, model: str) -> LeaderboardRow:
        games = rating.games if rating else 0
        return LeaderboardRow(
            model=model,
            rating=rating,
            games=games,
            preliminary=games < min_games,
            rank=None,
            is_base=model == base,
            vs_base=win_rates.get((model, base)) if base and model != base else None,
        )

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
        ratings=ratings,
        win_rates=win_rates,
        games=len(outcomes),
        base=base,
        rows=leaderboard_rows(ratings=ratings, win_rates=win_rates, base=base, min_games=min_games),
    )

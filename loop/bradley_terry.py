"""Bradley-Terry strengths of models from pairwise outcomes, with bootstrap intervals and an Elo-like scale.

P(i beats j) = p_i / (p_i + p_j). Fitted with Hunter's (2004) MM algorithm, which increases the likelihood at every
step. A tie counts as half a win for each side. `prior_games` adds that many virtual tied games between every pair
that played, which keeps a model that won (or lost) every game at a finite score; 0 gives the plain MLE.
Pure Python + NumPy: no Django, testable against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ELO_BASE = 1000.0
ELO_SCALE = 400.0  # as in chess Elo: 400 points = odds of 10 to 1


@dataclass(frozen=True)
class Outcome:
    first: str
    second: str
    score: float  # for `first`: 1 win, 0.5 tie, 0 loss


@dataclass(frozen=True)
class Rating:
    model: str
    strength: float  # geometric mean of all strengths is 1
    elo: float
    elo_low: float  # bootstrap 95% interval
    elo_high: float
    games: int


def _matrices(
    outcomes: Sequence[Outcome], index: dict[str, int], prior_games: float
) -> tuple[np.ndarray, np.ndarray]:
    size = len(index)
    wins = np.zeros((size, size))
    games = np.zeros((size, size))
    for outcome in outcomes:
        i, j = index[outcome.first], index[outcome.second]
        wins[i, j] += outcome.score
        wins[j, i] += 1.0 - outcome.score
        games[i, j] += 1
        games[j, i] += 1
    if prior_games:
        played = games > 0
        wins += played * (prior_games / 2)
        games += played * prior_games
    return wins, games


def fit_strengths(
    outcomes: Sequence[Outcome],
    models: Sequence[str],
    prior_games: float = 1.0,
    iterations: int = 10_000,
    tol: float = 1e-12,
) -> np.ndarray:
    """Strengths in the order of `models`, normalised to geometric mean 1."""
    index = {model: position for position, model in enumerate(models)}
    wins, games = _matrices(outcomes, index, prior_games)
    total_wins = wins.sum(axis=1)
    strengths = np.ones(len(models))
    for _ in range(iterations):
        denominator = (games / (strengths[:, None] + strengths[None, :])).sum(axis=1)
        updated = np.where(denominator > 0, total_wins / np.where(denominator > 0, denominator, 1), strengths)
        updated = np.clip(updated, 1e-300, None)
        updated /= math.exp(np.log(updated).mean())
        if np.max(np.abs(np.log(updated) - np.log(strengths))) < tol:
            strengths = updated
            break
        strengths = updated
    return strengths


def elo(strengths: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * np.log10(strengths)


def rate(
    outcomes: Sequence[Outcome], prior_games: float = 1.0, bootstrap: int = 200, seed: int = 0
) -> list[Rating]:
    """Ratings, best first, with 95% intervals from resampling the outcomes with replacement."""
    models = sorted({o.first for o in outcomes} | {o.second for o in outcomes})
    if not models:
        return []
    strengths = fit_strengths(outcomes, models, prior_games)
    point = elo(strengths)
    samples = np.empty((bootstrap, len(models)))
    rng = np.random.default_rng(seed)
    for b in range(bootstrap):
        picked = rng.integers(0, len(outcomes), size=len(outcomes))
        samples[b] = elo(
            fit_strengths([outcomes[i] for i in picked], models, prior_games, iterations=2000, tol=1e-9)
        )
    low, high = np.percentile(samples, [2.5, 97.5], axis=0) if bootstrap else (point, point)
    games = {model: 0 for model in models}
    for outcome in outcomes:
        games[outcome.first] += 1
        games[outcome.second] += 1
    ratings = [
        Rating(
            model=model,
            strength=float(strengths[i]),
            elo=float(point[i]),
            elo_low=float(low[i]),
            elo_high=float(high[i]),
            games=games[model],
        )
        for i, model in enumerate(models)
    ]
    return sorted(ratings, key=lambda rating: -rating.elo)


def win_rates(outcomes: Sequence[Outcome]) -> dict[tuple[str, str], tuple[float, int]]:
    """Observed (win rate of row over column, games) for every pair that played; ties count half."""
    table: dict[tuple[str, str], list[float]] = {}
    for outcome in outcomes:
        for row, column, score in (
            (outcome.first, outcome.second, outcome.score),
            (outcome.second, outcome.first, 1 - outcome.score),
        ):
            cell = table.setdefault((row, column), [0.0, 0])
            cell[0] += score
            cell[1] += 1
    return {pair: (wins / games, int(games)) for pair, (wins, games) in table.items()}

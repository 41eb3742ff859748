"""Bradley-Terry against hand-computed values."""

import math

import numpy as np
import pytest

from loop.bradley_terry import Outcome, elo, fit_strengths, rate, win_rates


def games(first: str, second: str, wins: int, losses: int, ties: int = 0) -> list[Outcome]:
    return (
        [Outcome(first, second, 1.0)] * wins
        + [Outcome(first, second, 0.0)] * losses
        + [Outcome(first, second, 0.5)] * ties
    )


def test_two_models_strength_ratio_is_the_win_ratio():
    # MLE for two players: p_A / p_B = wins_A / wins_B = 3 / 1, so the Elo gap is 400·log10(3) ≈ 190.85.
    strengths = fit_strengths(games("A", "B", 3, 1), ["A", "B"], prior_games=0)
    assert strengths[0] / strengths[1] == pytest.approx(3.0, rel=1e-9)
    assert math.prod(strengths) == pytest.approx(1.0)
    gap = elo(strengths)[0] - elo(strengths)[1]
    assert gap == pytest.approx(400 * math.log10(3), abs=1e-6)


def test_ties_count_half_and_prior_keeps_a_perfect_record_finite():
    even = fit_strengths(games("A", "B", 1, 1, ties=2), ["A", "B"], prior_games=0)
    assert even[0] == pytest.approx(even[1])
    # 5–0 plus one virtual tie: A has 5.5 wins, B 0.5, so p_A / p_B = 11.
    lopsided = fit_strengths(games("A", "B", 5, 0), ["A", "B"], prior_games=1.0)
    assert lopsided[0] / lopsided[1] == pytest.approx(11.0, rel=1e-9)


def test_three_models_satisfy_the_likelihood_equations():
    outcomes = games("A", "B", 2, 1) + games("B", "C", 2, 1) + games("A", "C", 3, 1)
    models = ["A", "B", "C"]
    p = fit_strengths(outcomes, models, prior_games=0)
    # Score equations of the MLE: each model's wins equal its expected wins under the fitted strengths.
    n = {("A", "B"): 3, ("B", "C"): 3, ("A", "C"): 4}
    wins = {"A": 2 + 3, "B": 1 + 2, "C": 1 + 1}
    for i, model in enumerate(models):
        expected = 0.0
        for (x, y), count in n.items():
            if model in (x, y):
                j = models.index(y if model == x else x)
                expected += count * p[i] / (p[i] + p[j])
        assert expected == pytest.approx(wins[model], rel=1e-8)
    assert p[0] > p[1] > p[2]


def test_rate_orders_models_and_bootstrap_interval_contains_estimate():
    outcomes = games("strong", "weak", 30, 10) + games("strong", "mid", 22, 18) + games("mid", "weak", 25, 15)
    ratings = rate(outcomes, bootstrap=300, seed=1)
    assert [r.model for r in ratings] == ["strong", "mid", "weak"]
    for r in ratings:
        assert r.elo_low <= r.elo <= r.elo_high
    assert ratings[0].games == 80
    assert np.mean([r.elo for r in ratings]) == pytest.approx(1000.0)
    more = rate(outcomes * 4, bootstrap=300, seed=1)
    assert (more[0].elo_high - more[0].elo_low) < (ratings[0].elo_high - ratings[0].elo_low)


def test_win_rates_matrix():
    table = win_rates(games("A", "B", 3, 1, ties=2))
    assert table[("A", "B")] == (pytest.approx(4 / 6), 6)
    assert table[("B", "A")] == (pytest.approx(2 / 6), 6)

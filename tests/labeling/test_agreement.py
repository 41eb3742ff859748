"""Agreement and gold math against hand-computed values."""

from __future__ import annotations

import pytest

from labeling.agreement import (
    gold_score,
    gold_stats,
    krippendorff_alpha_ordinal,
    majority_agreement,
    pairwise_percent_agreement,
    ranking_alpha,
)


def test_alpha_ordinal_matches_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units, values 1-5
    # with missing data; the paper gives α_ordinal = 0.815.
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in column if v is not None] for column in zip(*coders, strict=True)]
    assert krippendorff_alpha_ordinal(units) == pytest.approx(0.815, abs=5e-4)


def test_alpha_ordinal_small_hand_computed():
    # Units [1,1], [1,2], [2,2]: o11 = 2, o12 = o21 = 1, o22 = 2; n1 = n2 = 3, n = 6;
    # δ²(1,2) = (n1 + n2 − (n1 + n2)/2)² = 9; α = 1 − (n − 1)·Σoδ² / Σ n_c n_k δ² = 1 − 5·18/162 = 4/9.
    assert krippendorff_alpha_ordinal([[1, 1], [1, 2], [2, 2]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha_ordinal([[1, 1], [2, 2]]) == pytest.approx(1.0)
    assert krippendorff_alpha_ordinal([[1], [2]]) is None  # nothing pairable
    assert krippendorff_alpha_ordinal([[1, 1], [1, 1]]) is None  # no variation


def test_ranking_alpha_and_percent_agreement_hand_computed():
    # Comparison 1: both annotators agree; comparison 2: they disagree. Units (c1,x) [1,1], (c1,y) [2,2],
    # (c2,a) [1,2], (c2,b) [2,1]: o11 = o22 = 2, o12 = o21 = 2, n1 = n2 = 4, n = 8, δ²(1,2) = (8 − 4)² = 16.
    # α = 1 − 7·64 / 512 = 0.125. Pairwise: 1 agreement out of 2 judgements.
    rows = [
        (1, 10, {"1": 1, "2": 2}),
        (1, 11, {"1": 1, "2": 2}),
        (2, 10, {"3": 1, "4": 2}),
        (2, 11, {"3": 2, "4": 1}),
        (3, 10, {"5": 1, "6": 2}),  # a single ranking carries no agreement information
    ]
    assert ranking_alpha(rows) == pytest.approx(0.125)
    percent = pairwise_percent_agreement(rows)
    assert (percent.agreements, percent.comparisons) == (1, 2)
    assert percent.value == pytest.approx(0.5)


def test_percent_agreement_counts_every_response_pair_and_ties():
    # 3-way: X = a1 b2 c3, Y = a1 b1 c3 → pairs (a,b) differ (X: a better, Y: tie), (a,c), (b,c) agree: 2/3.
    rows = [(1, 1, {"1": 1, "2": 2, "3": 3}), (1, 2, {"1": 1, "2": 1, "3": 3})]
    percent = pairwise_percent_agreement(rows)
    assert (percent.agreements, percent.comparisons) == (2, 3)


def test_majority_agreement_leave_one_out_hand_computed():
    # Responses a=1, b=2, c=3. X and W: a>b>c; Y: a=b>c; Z: c>b>a.
    # X: (a,b) others Y tie, W a, Z b → no strict majority, skipped; (a,c), (b,c) agree → 2/2.
    # Y: (a,b) others X a, W a, Z b → majority a, Y says tie → 2/3. Z disagrees everywhere → 0/3.
    x = {"1": 1, "2": 2, "3": 3}
    rows = [
        (7, "X", x),
        (7, "W", dict(x)),
        (7, "Y", {"1": 1, "2": 1, "3": 3}),
        (7, "Z", {"1": 3, "2": 2, "3": 1}),
    ]
    result = majority_agreement(rows)
    assert (result["X"].agreements, result["X"].comparisons) == (2, 2)
    assert (result["W"].agreements, result["W"].comparisons) == (2, 2)
    assert result["Y"].value == pytest.approx(2 / 3)
    assert result["Z"].value == 0.0


def test_gold_score_and_trust():
    expected = {"1": 1, "2": 2, "3": 3}
    assert gold_score({"1": 1, "2": 2, "3": 3}, expected) == 1.0
    assert gold_score({"1": 1, "2": 3, "3": 2}, expected) == pytest.approx(2 / 3)  # (b,c) wrong
    assert gold_score({"1": 1, "2": 1, "3": 2}, expected) == pytest.approx(2 / 3)  # tie where none expected
    stats = gold_stats([(5, {"1": 1, "2": 3, "3": 2}, expected), (5, {"1": 1, "2": 2, "3": 3}, expected)])[5]
    assert stats.items == 2
    assert stats.accuracy == pytest.approx(5 / 6)
    assert stats.trust == pytest.approx((5 / 3 + 1) / 4)  # Laplace: (Σ scores + 1) / (n + 2) = 2/3
    assert gold_stats([]) == {}

"""Agreement and gold math over plain data (no database): Krippendorff's α (ordinal), pairwise percent agreement,
per-annotator agreement with the majority, gold scores and trust.

Conventions (stated here because agreement on rankings can be defined several ways):
- α treats every (comparison, response) as a unit and the rank each annotator gave that response as an ordinal
  value; units with fewer than two ranks carry no information and are dropped (Krippendorff 2011).
- Pairwise percent agreement: for every comparison, every pair of annotators and every pair of its responses,
  do both annotators order the two responses the same way (better / tie / worse)? The share of such agreements.
- Agreement with the majority is leave-one-out: an annotator's relation on a response pair is compared with the
  relation most of the *other* annotators of that comparison chose; pairs without a strict majority are skipped.
- A gold score is the share of response pairs an annotator ordered as the expected ranking does; trust is the
  Laplace-smoothed mean gold score, (Σ scores + 1) / (n + 2): 0.5 with no evidence, towards the accuracy with more.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from labeling.ranks import pair_relations

RankingRow = tuple[int, int, Mapping[str, int]]  # (comparison id, annotator id, ranks)


def krippendorff_alpha_ordinal(units: Iterable[Sequence[int]]) -> float | None:
    """α for ordinal data. `units` holds, per unit, the values the coders gave it (missing values left out).

    Returns None when there is nothing to measure (fewer than two pairable values, or no variation at all).
    """
    coincidence: dict[tuple[int, int], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincidence[(values[i], values[j])] += 1.0 / (m - 1)
    if not coincidence:
        return None
    categories = sorted({c for c, _ in coincidence})
    n_c = {c: sum(coincidence.get((c, k), 0.0) for k in categories) for c in categories}
    n = sum(n_c.values())
    index = {c: i for i, c in enumerate(categories)}

    def delta2(c: int, k: int) -> float:
        low, high = sorted((index[c], index[k]))
        between = sum(n_c[categories[g]] for g in range(low, high + 1))
        return (between - (n_c[c] + n_c[k]) / 2.0) ** 2

    observed = sum(o * delta2(c, k) for (c, k), o in coincidence.items())
    expected = sum(n_c[c] * n_c[k] * delta2(c, k) for c in categories for k in categories) / (n - 1)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def _by_comparison(rankings: Iterable[RankingRow]) -> dict[int, dict[int, Mapping[str, int]]]:
    grouped: dict[int, dict[int, Mapping[str, int]]] = defaultdict(dict)
    for comparison_id, annotator_id, ranks in rankings:
        grouped[comparison_id][annotator_id] = ranks
    return grouped


def ranking_alpha(rankings: Iterable[RankingRow]) -> float | None:
    """Krippendorff's α (ordinal) with (comparison, response) as units and ranks as values."""
    units = []
    for by_annotator in _by_comparison(rankings).values():
        if len(by_annotator) < 2:
            continue
        response_ids = sorted({rid for ranks in by_annotator.values() for rid in ranks})
        for rid in response_ids:
            units.append([ranks[rid] for ranks in by_annotator.values() if rid in ranks])
    return krippendorff_alpha_ordinal(units)


@dataclass(frozen=True)
class PercentAgreement:
    agreements: int
    comparisons: int  # (annotator pair × response pair) judgements compared

    @property
    def value(self) -> float | None:
        return self.agreements / self.comparisons if self.comparisons else None


def pairwise_percent_agreement(rankings: Iterable[RankingRow]) -> PercentAgreement:
    agree = total = 0
    for by_annotator in _by_comparison(rankings).values():
        relations = [pair_relations(ranks) for ranks in by_annotator.values()]
        for first, second in combinations(relations, 2):
            for pair, relation in first.items():
                if pair in second:
                    total += 1
                    agree += relation == second[pair]
    return PercentAgreement(agree, total)


def comparison_percent_agreement(rankings: Iterable[RankingRow]) -> dict[int, PercentAgreement]:
    """Pairwise percent agreement of each comparison that has at least two rankings."""
    result = {}
    for comparison_id, by_annotator in _by_comparison(rankings).items():
        if len(by_annotator) >= 2:
            rows = [(comparison_id, annotator_id, ranks) for annotator_id, ranks in by_annotator.items()]
            result[comparison_id] = pairwise_percent_agreement(rows)
    return result


def majority_agreement(rankings: Iterable[RankingRow]) -> dict[int, PercentAgreement]:
    """Per annotator: how often their relation on a response pair matches the strict majority of the others."""
    agree: Counter[int] = Counter()
    total: Counter[int] = Counter()
    for by_annotator in _by_comparison(rankings).values():
        relations = {annotator: pair_relations(ranks) for annotator, ranks in by_annotator.items()}
        for annotator, mine in relations.items():
            for pair, relation in mine.items():
                votes = Counter(
                    other[pair] for a, other in relations.items() if a != annotator and pair in other
                )
                if not votes:
                    continue
                (top, top_count), *rest = votes.most_common()
                if rest and rest[0][1] == top_count:
                    continue
                total[annotator] += 1
                agree[annotator] += relation == top
    return {annotator: PercentAgreement(agree[annotator], total[annotator]) for annotator in total}


def gold_score(ranks: Mapping[str, int], expected: Mapping[str, int]) -> float:
    """Share of response pairs ordered as in the expected ranking (ties must match ties)."""
    expected_relations = pair_relations({str(k): v for k, v in expected.items()})
    given = pair_relations({str(k): v for k, v in ranks.items()})
    if not expected_relations:
        return 0.0
    return sum(given.get(pair) == relation for pair, relation in expected_relations.items()) / len(
        expected_relations
    )


@dataclass(frozen=True)
class GoldStats:
    items: int
    score_sum: float

    @property
    def accuracy(self) -> float | None:
        return self.score_sum / self.items if self.items else None

    @property
    def trust(self) -> float:
        return (self.score_sum + 1.0) / (self.items + 2.0)


def gold_stats(rows: Iterable[tuple[int, Mapping[str, int], Mapping[str, int]]]) -> dict[int, GoldStats]:
    """Per annotator from (annotator id, ranks, expected ranks) of their gold rankings."""
    items: Counter[int] = Counter()
    sums: defaultdict[int, float] = defaultdict(float)
    for annotator_id, ranks, expected in rows:
        items[annotator_id] += 1
        sums[annotator_id] += gold_score(ranks, expected)
    return {annotator_id: GoldStats(items[annotator_id], sums[annotator_id]) for annotator_id in items}

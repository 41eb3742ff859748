"""How the votes and the adjudication of a comparison become judgements (gold comparisons only appear in `raw`:
they measure annotators).

- an adjudication (an admin's final ranking) is preferred over the votes whenever there is one;
- aggregation "majority": one consensus ranking per comparison from the votes — responses ordered by their mean
  rank (the Borda count; for two responses this is exactly the majority vote), equal means are ties;
- aggregation "all": every vote is its own judgement (rows carry the annotator pseudonym);
- `sft` and `kto` need a verdict per response, so they work per prompt over all of its comparisons: each judgement
  contributes wins and losses for every strictly ordered pair; a response's net score is wins − losses
  (`net_scores`).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import NamedTuple

from exports.filters import PreferenceFilters
from exports.hashing import Pseudonyms
from exports.loading import Item


class Judgement(NamedTuple):
    source: str  # adjudication | consensus | vote
    ranks: dict[str, int]
    annotator: str | None
    votes: int
    agreement: float | None


def vote_agreement(votes: list[tuple[int, dict[str, int]]], response_ids: list[int]) -> float | None:
    """Pairwise percent agreement of one comparison's (annotator id, ranks) votes (as labeling.agreement defines
    it), by counting: for each response pair, the annotator pairs that chose the same relation."""
    n = len(votes)
    if n < 2:
        return None
    keys = [str(rid) for rid in response_ids]
    annotator_pairs = n * (n - 1) // 2
    if len(keys) == 2:  # the common pairwise case, without the generic loop
        x, y = keys
        better = worse = 0
        for _, ranks in votes:
            a, b = ranks[x], ranks[y]
            if a < b:
                better += 1
            elif a > b:
                worse += 1
        tied = n - better - worse
        agree = (better * (better - 1) + worse * (worse - 1) + tied * (tied - 1)) // 2
        return round(agree / annotator_pairs, 6)
    agree = 0
    for x, y in combinations(keys, 2):
        counts: dict[int, int] = {}
        for _, ranks in votes:
            a, b = ranks[x], ranks[y]
            relation = (a < b) - (a > b)
            counts[relation] = counts.get(relation, 0) + 1
        agree += sum(c * (c - 1) // 2 for c in counts.values())
    total = annotator_pairs * (len(keys) * (len(keys) - 1) // 2)
    return round(agree / total, 6) if total else None


def consensus(votes: list[tuple[int, dict[str, int]]]) -> dict[str, int]:
    """Dense ranks by total (equivalently mean) rank over the votes; equal totals tie."""
    totals: dict[str, int] = defaultdict(int)
    for _, ranks in votes:
        for rid, rank in ranks.items():
            totals[rid] += rank
    levels = {total: index + 1 for index, total in enumerate(sorted(set(totals.values())))}
    return {rid: levels[total] for rid, total in totals.items()}


def item_judgements(item: Item, filters: PreferenceFilters, pseudonyms: Pseudonyms) -> list[Judgement]:
    """`judge` of a loaded comparison."""
    return judge(item.adjudication, item.votes, item.response_ids, filters, pseudonyms)


def judge(
    adjudication: dict[str, int] | None,
    votes: list[tuple[int, dict[str, int]]],
    response_ids: list[int],
    filters: PreferenceFilters,
    pseudonyms: Pseudonyms,
) -> list[Judgement]:
    """The judgements one comparison gives (see the module docstring), from its adjudication and kept votes."""
    if adjudication is not None:
        agreement = vote_agreement(votes, response_ids)
        return [Judgement("adjudication", adjudication, None, len(votes), agreement)]
    if filters.adjudicated_only or not votes:
        return []
    agreement = vote_agreement(votes, response_ids)
    if filters.min_agreement is not None and (agreement is None or agreement < filters.min_agreement):
        return []
    if filters.aggregation == "majority":
        return [Judgement("consensus", consensus(votes), None, len(votes), agreement)]
    return [
        Judgement("vote", ranks, pseudonyms(annotator_id), len(votes), agreement)
        for annotator_id, ranks in votes
    ]


def net_scores(group: list[Item], filters: PreferenceFilters, pseudonyms: Pseudonyms) -> dict[int, int]:
    """Each response's wins − losses over every judgement of one prompt's comparisons (`group`)."""
    net: dict[int, int] = defaultdict(int)
    for item in group:
        for judgement in item_judgements(item, filters, pseudonyms):
            for i, j in combinations(item.response_ids, 2):
                a, b = judgement.ranks[str(i)], judgement.ranks[str(j)]
                if a != b:
                    win, lose = (i, j) if a < b else (j, i)
                    net[win] += 1
                    net[lose] -= 1
    return net

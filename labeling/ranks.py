"""Pure helpers for rankings: validation, dense normalisation, pairwise relations. No database access.

A ranking is a dict {response id (str): rank (int)}: 1 is best, equal ranks are ties. Rankings are stored in
dense form ({a: 1, b: 1, c: 2}), so the same order always has the same representation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations

from django.core.exceptions import ValidationError

PAIRWISE_CHOICES = ("a", "b", "tie", "both_bad")


def ranks_dense(ranks: Mapping[str, int]) -> dict[str, int]:
    """Map ranks to 1..m keeping order and ties: {x: 1, y: 3, z: 3} -> {x: 1, y: 2, z: 2}."""
    levels = {value: index + 1 for index, value in enumerate(sorted(set(ranks.values())))}
    return {key: levels[value] for key, value in ranks.items()}


def ranks_validate(
    *, ranks: Mapping, response_ids: Iterable[int | str], allow_ties: bool, field: str = "ranks"
) -> dict[str, int]:
    """Check that `ranks` ranks exactly these responses with integers 1..k (ties only when allowed).

    Returns the dense form. Raises ValidationError({field: message}) with a message meant for the annotator.
    """
    expected = [str(rid) for rid in response_ids]
    k = len(expected)
    if not isinstance(ranks, Mapping):
        raise ValidationError({field: "The ranking must map each response to a rank."})
    given = {str(key): value for key, value in ranks.items()}
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise ValidationError({field: f"Responses {', '.join(unknown)} are not part of this comparison."})
    missing = [rid for rid in expected if rid not in given or given[rid] in (None, "")]
    if missing:
        raise ValidationError({field: f"Give every response a rank: {len(missing)} of {k} have none."})
    parsed: dict[str, int] = {}
    for rid in expected:
        value = given[rid]
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValidationError({field: f"Rank {value!r} is not a whole number."}) from None
        if isinstance(value, float) and value != number or isinstance(value, bool):
            raise ValidationError({field: f"Rank {value!r} is not a whole number."})
        if not 1 <= number <= k:
            raise ValidationError({field: f"Ranks go from 1 (best) to {k}; {number} is out of range."})
        parsed[rid] = number
    if not allow_ties and len(set(parsed.values())) != k:
        raise ValidationError(
            {field: "Ties are not allowed in this project: give each response a different rank."}
        )
    return ranks_dense(parsed)


def ranks_from_pairwise_choice(
    *, choice: str, display_order: list[int], allow_ties: bool
) -> tuple[dict[str, int], bool]:
    """Turn a pairwise answer into ranks over the displayed order: (ranks, both_bad).

    "a" is the response shown first (left), "b" the one shown second. "both_bad" is recorded as a tie with the
    both_bad mark; it is allowed even where ties are not, because it says something different from "equally good".
    """
    if choice not in PAIRWISE_CHOICES:
        raise ValidationError({"choice": "Choose A better, B better, tie or both bad."})
    if len(display_order) != 2:
        raise ValidationError({"choice": "This comparison is not pairwise."})
    a, b = (str(rid) for rid in display_order)
    if choice == "a":
        return {a: 1, b: 2}, False
    if choice == "b":
        return {a: 2, b: 1}, False
    if choice == "tie" and not allow_ties:
        raise ValidationError({"choice": "Ties are not allowed in this project."})
    return {a: 1, b: 1}, choice == "both_bad"


def pair_relation(ranks: Mapping[str, int], first: str, second: str) -> int:
    """1 if `first` is preferred, -1 if `second` is, 0 for a tie."""
    a, b = ranks[first], ranks[second]
    return (a < b) - (a > b)


def pair_relations(ranks: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """The relation of every unordered pair of responses, keyed by (smaller id, larger id) as strings."""
    keys = sorted(ranks, key=lambda key: (len(key), key))
    return {(x, y): pair_relation(ranks, x, y) for x, y in combinations(keys, 2)}

"""raw: one row per ranking, gold comparisons included, for analysis: `ranking_id`, `annotator` (pseudonym),
`prompt`, `responses`, `response_ids`, `ranks`, `display_order`, `both_bad`, `flags`, `rationale`, `seconds_spent`,
`created_at` (ISO 8601), `is_gold`, `expected_ranks`, `adjudicated_ranks` (aligned with `response_ids`, null when
none), `agreement`, `comparison_id`, `prompt_id`, `domain`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC

import pyarrow as pa

from exports.filters import PreferenceFilters
from exports.formats.base import COMMON, IDS, MESSAGES, ROW_CODEC, Format, per_comparison
from exports.hashing import Pseudonyms
from exports.judgements import vote_agreement
from exports.loading import Item


def _aligned(ranks: Mapping[str, int] | None, response_ids: list[int]) -> list[int] | None:
    if ranks is None:
        return None
    return [ranks.get(str(rid)) for rid in response_ids]


def raw_rows(item: Item, filters: PreferenceFilters, pseudonyms: Pseudonyms) -> Iterator[dict]:
    """Every kept vote of one comparison, if the comparison passes the filters."""
    if filters.adjudicated_only and item.adjudication is None:
        return
    agreement = vote_agreement(item.votes, item.response_ids)
    if (
        filters.min_agreement is not None
        and item.adjudication is None
        and (agreement is None or agreement < filters.min_agreement)
    ):
        return
    for vote in item.details:
        yield {
            "ranking_id": vote.ranking_id,
            "annotator": pseudonyms(vote.annotator_id),
            "prompt": item.messages,
            "responses": list(item.contents),
            "response_ids": list(item.response_ids),
            "ranks": _aligned(vote.ranks, item.response_ids),
            "display_order": list(vote.display_order),
            "both_bad": vote.both_bad,
            "flags": list(vote.flags),
            "rationale": vote.rationale,
            "seconds_spent": float(vote.seconds_spent),
            "created_at": vote.created_at.astimezone(UTC).isoformat(),
            "is_gold": item.is_gold,
            "expected_ranks": _aligned(item.expected_ranks, item.response_ids),
            "adjudicated_ranks": _aligned(item.adjudication, item.response_ids),
            "domain": item.domain,
            "comparison_id": item.id,
            "prompt_id": item.prompt_id,
            "agreement": agreement,
        }


SCHEMA = pa.schema(
    [
        ("ranking_id", pa.int64()),
        ("annotator", pa.string()),
        ("prompt", MESSAGES),
        ("responses", pa.list_(pa.string())),
        ("response_ids", IDS),
        ("ranks", IDS),
        ("display_order", IDS),
        ("both_bad", pa.bool_()),
        ("flags", pa.list_(pa.string())),
        ("rationale", pa.string()),
        ("seconds_spent", pa.float64()),
        ("created_at", pa.string()),
        ("is_gold", pa.bool_()),
        ("expected_ranks", IDS),
        ("adjudicated_ranks", IDS),
        ("comparison_id", pa.int64()),
        ("agreement", pa.float64()),
        *COMMON,
    ]
)

FORMAT = Format(
    name="raw",
    codec=ROW_CODEC,
    records=per_comparison(raw_rows),
    schema=SCHEMA,
    include_gold=True,
    with_details=True,
)

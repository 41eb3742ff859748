"""ranking (k-way with ties): `prompt`, `responses` (contents in comparison order), `response_ids`, `ranks` (1 best,
equal = tie), `source`, `annotator`, `votes`, `agreement`, `comparison_id`, `prompt_id`, `domain`. One row per
judgement."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from exports.filters import PreferenceFilters
from exports.formats.base import COMMON, IDS, JUDGEMENT, MESSAGES, ROW_CODEC, Format, per_comparison
from exports.hashing import Pseudonyms
from exports.judgements import Judgement, item_judgements
from exports.loading import Item


def ranking_row(item: Item, judgement: Judgement) -> dict:
    return {
        "prompt": item.messages,
        "responses": list(item.contents),
        "response_ids": list(item.response_ids),
        "ranks": [judgement.ranks[str(rid)] for rid in item.response_ids],
        "domain": item.domain,
        "comparison_id": item.id,
        "prompt_id": item.prompt_id,
        "source": judgement.source,
        "annotator": judgement.annotator,
        "votes": judgement.votes,
        "agreement": judgement.agreement,
    }


def ranking_rows(item: Item, filters: PreferenceFilters, pseudonyms: Pseudonyms) -> Iterator[dict]:
    """One row per judgement of the comparison."""
    for judgement in item_judgements(item, filters, pseudonyms):
        yield ranking_row(item, judgement)


SCHEMA = pa.schema(
    [
        ("prompt", MESSAGES),
        ("responses", pa.list_(pa.string())),
        ("response_ids", IDS),
        ("ranks", IDS),
        *COMMON,
        *JUDGEMENT,
    ]
)

FORMAT = Format(name="ranking", codec=ROW_CODEC, records=per_comparison(ranking_rows), schema=SCHEMA)

"""sft: `messages` (the prompt + its best response as the assistant turn), `response_id`, `comparison_ids`,
`net_wins`, `prompt_id`, `domain`. One row per prompt whose best response (highest net score over all of its
comparisons' judgements) is strictly above every other and above 0."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from exports.filters import PreferenceFilters
from exports.formats.base import COMMON, IDS, MESSAGES, ROW_CODEC, Format, group_contents, per_prompt
from exports.hashing import Pseudonyms
from exports.json_text import assistant_turn
from exports.judgements import net_scores
from exports.loading import Item


def sft_rows(group: list[Item], filters: PreferenceFilters, pseudonyms: Pseudonyms) -> Iterator[dict]:
    net = net_scores(group, filters, pseudonyms)
    if not net:
        return
    ordered = sorted(net.items(), key=lambda pair: (-pair[1], pair[0]))
    best, score = ordered[0]
    if score <= 0 or (len(ordered) > 1 and ordered[1][1] == score):
        return
    first = group[0]
    yield {
        "messages": [*first.messages, *assistant_turn(group_contents(group)[best])],
        "response_id": best,
        "domain": first.domain,
        "prompt_id": first.prompt_id,
        "comparison_ids": [item.id for item in group],
        "net_wins": score,
    }


SCHEMA = pa.schema(
    [
        ("messages", MESSAGES),
        ("response_id", pa.int64()),
        ("comparison_ids", IDS),
        ("net_wins", pa.int64()),
        *COMMON,
    ]
)

FORMAT = Format(name="sft", codec=ROW_CODEC, records=per_prompt(sft_rows), schema=SCHEMA, by_prompt=True)

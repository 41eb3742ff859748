"""kto (TRL unpaired preference): `prompt`, `completion` (one assistant message), `label` (bool), `response_id`,
`comparison_ids`, `net_wins`, `prompt_id`, `domain`. Per prompt, every response with a net score above 0 is
desirable (True), below 0 undesirable (False); a net score of 0 gives no row."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from exports.filters import PreferenceFilters
from exports.formats.base import COMMON, IDS, MESSAGES, ROW_CODEC, Format, group_contents, per_prompt
from exports.hashing import Pseudonyms
from exports.json_text import assistant_turn
from exports.judgements import net_scores
from exports.loading import Item


def kto_rows(group: list[Item], filters: PreferenceFilters, pseudonyms: Pseudonyms) -> Iterator[dict]:
    net = net_scores(group, filters, pseudonyms)
    contents = group_contents(group)
    first = group[0]
    for rid in sorted(net):
        if net[rid] == 0:
            continue
        yield {
            "prompt": first.messages,
            "completion": assistant_turn(contents[rid]),
            "label": net[rid] > 0,
            "response_id": rid,
            "domain": first.domain,
            "prompt_id": first.prompt_id,
            "comparison_ids": [item.id for item in group],
            "net_wins": net[rid],
        }


SCHEMA = pa.schema(
    [
        ("prompt", MESSAGES),
        ("completion", MESSAGES),
        ("label", pa.bool_()),
        ("response_id", pa.int64()),
        ("comparison_ids", IDS),
        ("net_wins", pa.int64()),
        *COMMON,
    ]
)

FORMAT = Format(name="kto", codec=ROW_CODEC, records=per_prompt(kto_rows), schema=SCHEMA, by_prompt=True)

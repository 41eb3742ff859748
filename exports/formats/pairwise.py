"""pairwise (TRL conversational preference): `prompt` (messages list), `chosen` / `rejected` (one assistant message
each), `chosen_id`, `rejected_id`, `margin` (rank distance, float), `source` ("adjudication" | "consensus" |
"vote"), `annotator` (pseudonym for single votes, else null), `votes`, `agreement`, `comparison_id`, `prompt_id`,
`domain`. One row per strictly ordered response pair of each judgement: ties give no pair.

The hot path of big exports: `pair_line` and `pairwise_block` build the canonical JSON text from cached
fragments instead of a dict and `json.dumps` per row (`tests/exports/test_export_bytes.py` holds them to the
definition, `canonical_json_line(pair_row(pair))`)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from typing import NamedTuple

import pyarrow as pa

from exports.filters import PreferenceFilters
from exports.formats.base import COMMON, JUDGEMENT, MESSAGES, Format, RecordCodec
from exports.hashing import Pseudonyms
from exports.json_text import assistant_turn, assistant_turn_json, json_number
from exports.judgements import Judgement, item_judgements, judge
from exports.loading import Chunk, Item
from exports.stats import CardStats


class Pair(NamedTuple):
    item: Item
    judgement: Judgement
    win: int
    lose: int
    cache: dict[int, str]


def pair_row(pair: Pair) -> dict:
    item, judgement, win, lose = pair.item, pair.judgement, pair.win, pair.lose
    a, b = judgement.ranks[str(item.response_ids[win])], judgement.ranks[str(item.response_ids[lose])]
    return {
        "prompt": item.messages,
        "chosen": assistant_turn(item.contents[win]),
        "rejected": assistant_turn(item.contents[lose]),
        "margin": float(b - a),
        "domain": item.domain,
        "comparison_id": item.id,
        "prompt_id": item.prompt_id,
        "chosen_id": item.response_ids[win],
        "rejected_id": item.response_ids[lose],
        "source": judgement.source,
        "annotator": judgement.annotator,
        "votes": judgement.votes,
        "agreement": judgement.agreement,
    }


def pair_line(pair: Pair) -> str:
    """canonical_json_line(pair_row(pair)), built from cached fragments (the hot path of big exports)."""
    item, judgement, win, lose = pair.item, pair.judgement, pair.win, pair.lose
    answers = item.answers_json(pair.cache)
    ids = item.response_ids
    margin = float(judgement.ranks[str(ids[lose])] - judgement.ranks[str(ids[win])])
    annotator = "null" if judgement.annotator is None else f'"{judgement.annotator}"'
    return (
        f'{{"agreement":{json_number(judgement.agreement)},"annotator":{annotator},"chosen":{answers[win]},'
        f'"chosen_id":{ids[win]},"comparison_id":{item.id},"domain":{item.prompt.domain_json},'
        f'"margin":{float.__repr__(margin)},"prompt":{item.prompt.messages_json},"prompt_id":{item.prompt_id},'
        f'"rejected":{answers[lose]},"rejected_id":{ids[lose]},"source":"{judgement.source}",'
        f'"votes":{judgement.votes}}}'
    )


def pair_meta(pair: Pair) -> tuple:
    judgement = pair.judgement
    return (pair.item.id, pair.item.prompt_id, judgement.source, None, pair.item.domain, judgement.agreement)


def pairs(item: Item, judgement: Judgement, cache: dict[int, str]) -> Iterator[Pair]:
    """The judgement's strictly ordered response pairs, winner first, in comparison order."""
    ranks = judgement.ranks
    keys = [str(rid) for rid in item.response_ids]
    for i, j in combinations(range(len(keys)), 2):
        a, b = ranks[keys[i]], ranks[keys[j]]
        if a != b:
            yield Pair(item, judgement, i, j, cache) if a < b else Pair(item, judgement, j, i, cache)


_PAIR_INDEXES = {k: tuple(combinations(range(k), 2)) for k in range(2, 17)}
_MARGINS = {d: float.__repr__(float(d)).encode() for d in range(1, 17)}


def pairwise_block(
    chunk: Chunk,
    filters: PreferenceFilters,
    pseudonyms: Pseudonyms,
    stats: CardStats,
) -> tuple[bytes, int]:
    """A chunk's pairwise rows as canonical JSON lines (UTF-8, each with its newline), assembled from byte
    fragments cached per response, comparison and judgement: the bytes of `canonical_json_line(pair_row(pair))`
    for each pair, in `pairs` order, without building a row, a line or an `Item` per pair (the hot path of big
    exports; `tests/exports/test_export_bytes.py` holds it to the definition)."""
    parts: list[bytes] = []
    rows = 0
    # response id -> (chosen…"chosen_id":N, rejected…"rejected_id":N)
    answers: dict[int, tuple[bytes, bytes]] = {}
    heads: dict[tuple, bytes] = {}  # (agreement, annotator) -> '{"agreement":…,"annotator":…,"chosen":'
    tails: dict[tuple, bytes] = {}  # (source, votes) -> ',"source":…,"votes":…}\n'
    exclude_flagged, flagged = filters.exclude_flagged, chunk.flagged
    all_votes, adjudications, all_response_ids = chunk.votes, chunk.adjudications, chunk.response_ids
    for cid, pid, _, _ in chunk.heads:
        if exclude_flagged and cid in flagged:
            continue
        ids = all_response_ids.get(cid, [])
        judgements = judge(adjudications.get(cid), all_votes.get(cid, []), ids, filters, pseudonyms)
        if not judgements:
            continue
        chosen, rejected = [], []
        for rid in ids:
            answer = answers.get(rid)
            if answer is None:
                text = assistant_turn_json(chunk.contents[rid]).encode()
                answer = answers[rid] = (text + b',"chosen_id":%d' % rid, text + b',"rejected_id":%d' % rid)
            chosen.append(answer[0])
            rejected.append(answer[1])
        prompt_data = chunk.prompts[pid]
        middle = b',"comparison_id":%d,"domain":%b,"margin":' % (cid, prompt_data.domain_bytes)
        prompt = prompt_data.pair_prompt(pid)
        keys = [str(rid) for rid in ids]
        pair_indexes = _PAIR_INDEXES.get(len(ids)) or tuple(combinations(range(len(ids)), 2))
        first = judgements[0]  # all judgements of a comparison share source, vote count and agreement
        tail = tails.get((first.source, first.votes))
        if tail is None:
            tail = tails[first.source, first.votes] = b',"source":"%b","votes":%d}\n' % (
                first.source.encode(),
                first.votes,
            )
        emitted = 0
        for judgement in judgements:
            head = heads.get((judgement.agreement, judgement.annotator))
            if head is None:
                annotator = b"null" if judgement.annotator is None else b'"%b"' % judgement.annotator.encode()
                head = heads[judgement.agreement, judgement.annotator] = (
                    b'{"agreement":%b,"annotator":%b,"chosen":'
                    % (json_number(judgement.agreement).encode(), annotator)
                )
            ranks = judgement.ranks
            for i, j in pair_indexes:
                a, b = ranks[keys[i]], ranks[keys[j]]
                if a == b:
                    continue
                if a > b:
                    i, j, a, b = j, i, b, a
                margin = _MARGINS.get(b - a) or float.__repr__(float(b - a)).encode()
                parts += (head, chosen[i], middle, margin, prompt, rejected[j], tail)
                emitted += 1
        if emitted:
            stats.add((cid, pid, first.source, None, prompt_data.domain, first.agreement), emitted)
            rows += emitted
    return b"".join(parts), rows


def records(
    items: Iterator[tuple[Item, dict]], filters: PreferenceFilters, pseudonyms: Pseudonyms
) -> Iterator[Pair]:
    """The pairs of every judgement, each with its chunk's cache of answer fragments (shared by comparisons)."""
    for item, cache in items:
        for judgement in item_judgements(item, filters, pseudonyms):
            yield from pairs(item, judgement, cache)


SCHEMA = pa.schema(
    [
        ("prompt", MESSAGES),
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("margin", pa.float64()),
        ("chosen_id", pa.int64()),
        ("rejected_id", pa.int64()),
        *COMMON,
        *JUDGEMENT,
    ]
)

FORMAT = Format(
    name="pairwise",
    codec=RecordCodec(pair_row, pair_line, pair_meta),
    records=records,
    schema=SCHEMA,
    blocks=pairwise_block,
)

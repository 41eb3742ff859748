"""What every export format shares: the `Format` it declares, how records become rows, lines and card statistics
(`RecordCodec`), the Arrow columns formats have in common, and the prompt groups of sft and kto."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from exports.filters import PreferenceFilters
from exports.hashing import Pseudonyms
from exports.json_text import canonical_json_line
from exports.loading import Chunk, Item
from exports.stats import CardStats

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
IDS = pa.list_(pa.int64())
COMMON = [("domain", pa.string()), ("prompt_id", pa.int64())]
JUDGEMENT = [
    ("comparison_id", pa.int64()),
    ("source", pa.string()),
    ("annotator", pa.string()),
    ("votes", pa.int64()),
    ("agreement", pa.float64()),
]


@dataclass(frozen=True)
class RecordCodec:
    """How a format's records become rows (dicts), canonical JSON lines, and card statistics."""

    to_row: Any
    to_line: Any
    meta: Any  # (group key, prompt id, source, label, domain, agreement)


# A format's records, from the loaded comparisons (each with its chunk's cache of answer fragments), in order.
Records = Callable[[Iterator[tuple[Item, dict]], PreferenceFilters, Pseudonyms], Iterator[Any]]
# A fast path: one chunk's JSONL bytes and row count straight from the loaded columns (stats updated as it goes).
Blocks = Callable[[Chunk, PreferenceFilters, Pseudonyms, CardStats], tuple[bytes, int]]


@dataclass(frozen=True)
class Format:
    """One export format: its records and how they are written, and how it reads the comparisons.

    `include_gold`: gold comparisons are read too (raw). `by_prompt`: rows group by prompt, so comparisons are read
    in (prompt, id) order and a parallel export slices them by prompt id (sft, kto). `with_details`: every kept
    vote is loaded in full (raw). `blocks`: a faster way to the same JSONL bytes than line by line (pairwise)."""

    name: str
    codec: RecordCodec
    records: Records
    schema: pa.Schema  # of Parquet files and Hugging Face datasets
    include_gold: bool = False
    by_prompt: bool = False
    with_details: bool = False
    blocks: Blocks | None = None

    def reading(self) -> dict[str, bool]:
        """The options of `exports.loading.iter_chunks` this format reads with."""
        return {
            "include_gold": self.include_gold,
            "by_prompt": self.by_prompt,
            "with_details": self.with_details,
        }


def identity(row: dict) -> dict:
    return row


def row_meta(row: dict) -> tuple:
    key = row.get("comparison_id")
    if key is None:  # sft / kto rows stand for a prompt
        key = ("prompt", row["prompt_id"])
    return (key, row["prompt_id"], row.get("source"), row.get("label"), row["domain"], row.get("agreement"))


# The formats whose records are already their rows.
ROW_CODEC = RecordCodec(identity, canonical_json_line, row_meta)


def prompt_groups(items: Iterator[tuple[Item, dict]]) -> Iterator[list[Item]]:
    """Consecutive items of one prompt (items come in (prompt, id) order for the formats that group)."""
    group: list[Item] = []
    for item, _ in items:
        if group and group[0].prompt_id != item.prompt_id:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def group_contents(group: list[Item]) -> dict[int, str]:
    """Response id -> text over a prompt group."""
    return {
        rid: content for item in group for rid, content in zip(item.response_ids, item.contents, strict=True)
    }


def per_comparison(rows: Callable[[Item, PreferenceFilters, Pseudonyms], Iterable[Any]]) -> Records:
    """The records of a format whose rows come from one comparison at a time (ranking, raw)."""

    def records(items: Iterator[tuple[Item, dict]], filters: PreferenceFilters, pseudonyms: Pseudonyms):
        for item, _ in items:
            yield from rows(item, filters, pseudonyms)

    return records


def per_prompt(rows: Callable[[list[Item], PreferenceFilters, Pseudonyms], Iterable[Any]]) -> Records:
    """The records of a format whose rows come from all the comparisons of one prompt at a time (sft, kto)."""

    def records(items: Iterator[tuple[Item, dict]], filters: PreferenceFilters, pseudonyms: Pseudonyms):
        for group in prompt_groups(items):
            yield from rows(group, filters, pseudonyms)

    return records

"""The SQL chunk loader: a project's comparisons after the filters, a chunk at a time, with everything the formats
need (prompts, responses in comparison order, kept votes, flags, adjudications) in one query per table.

A server-side cursor walks the comparisons (`.iterator(chunk_size=…)`) and each chunk costs a handful of bulk
queries, so memory stays flat for millions of rankings. Rows come straight from the driver where the ORM's
per-row conversion would cost more than the query (JSON stays text until parsed in one call)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from django.db import connections
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet

from exports.filters import (
    FLAGGED,
    PreferenceFilters,
    adjudication_queryset,
    comparison_queryset,
    vote_condition,
    vote_queryset,
)
from exports.json_text import assistant_turn_json, canonical_json_line
from labeling.models import ComparisonResponse, Project, Prompt, Ranking, Response
from labeling.selectors.quality import qualified_annotator_ids

DEFAULT_CHUNK_SIZE = 2000


@dataclass(slots=True)
class VoteDetail:
    ranking_id: int
    annotator_id: int
    ranks: dict[str, int]
    flags: list[str]
    both_bad: bool
    seconds_spent: float
    created_at: datetime
    rationale: str
    display_order: list[int]


class Item:
    """One comparison with everything the formats need; the JSON fragments are filled in lazily.

    A plain class with __slots__ (not a dataclass): one is built per comparison on the hot path."""

    __slots__ = (
        "id",
        "prompt_id",
        "is_gold",
        "expected_ranks",
        "prompt",
        "response_ids",
        "contents",
        "votes",
        "details",
        "adjudication",
        "_answers",
    )

    def __init__(self, id: int, prompt_id: int, is_gold: bool, expected_ranks, prompt: PromptData):
        self.id = id
        self.prompt_id = prompt_id
        self.is_gold = is_gold
        self.expected_ranks = expected_ranks
        self.prompt = prompt
        self.response_ids: list[int] = []  # comparison order (position)
        self.contents: list[str] = []
        self.votes: list[tuple[int, dict[str, int]]] = []  # (annotator id, ranks)
        self.details: list[VoteDetail] = []  # raw format only
        self.adjudication: dict[str, int] | None = None
        self._answers: list[str] | None = None

    @property
    def messages(self) -> list[dict]:
        return self.prompt.messages

    @property
    def domain(self) -> str:
        return self.prompt.domain

    def answers_json(self, cache: dict[int, str]) -> list[str]:
        """Canonical JSON of each response as a one-message assistant turn (cached per response in a chunk)."""
        if self._answers is None:
            answers = []
            for rid, content in zip(self.response_ids, self.contents, strict=True):
                text = cache.get(rid)
                if text is None:
                    text = cache[rid] = assistant_turn_json(content)
                answers.append(text)
            self._answers = answers
        return self._answers


@dataclass(slots=True)
class PromptData:
    messages: list[dict]
    domain: str
    _messages_json: str | None = None
    _domain_json: str | None = None
    _pair_prompt: bytes | None = None
    _domain_bytes: bytes | None = None

    @property
    def messages_json(self) -> str:
        if self._messages_json is None:
            self._messages_json = canonical_json_line(self.messages)
        return self._messages_json

    @property
    def domain_json(self) -> str:
        if self._domain_json is None:
            self._domain_json = json.dumps(self.domain, ensure_ascii=False)
        return self._domain_json

    @property
    def domain_bytes(self) -> bytes:
        if self._domain_bytes is None:
            self._domain_bytes = self.domain_json.encode()
        return self._domain_bytes

    def pair_prompt(self, prompt_id: int) -> bytes:
        """`,"prompt":[…],"prompt_id":N,"rejected":` of a canonical pairwise line, as UTF-8."""
        if self._pair_prompt is None:
            self._pair_prompt = (
                b',"prompt":' + self.messages_json.encode() + b',"prompt_id":%d,"rejected":' % prompt_id
            )
        return self._pair_prompt


def _fetch(queryset: QuerySet) -> list[tuple]:
    """Rows of a values_list queryset straight from the driver (no per-row ORM conversion: JSON stays text)."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _fetch_by_ids(model, columns: tuple[str, ...], ids: Iterable[int], db: str = "default") -> list[tuple]:
    """`columns` of the rows with these primary keys, unordered. On Postgres one `= ANY(array)` parameter (an
    index scan; a long `IN (%s, …)` list costs more to build, quote and plan than the query itself)."""
    ids = list(ids)
    if not ids:
        return []
    if connections[db].vendor == "postgresql":
        table = connections[db].ops.quote_name(model._meta.db_table)
        names = ", ".join(connections[db].ops.quote_name(model._meta.get_field(c).column) for c in columns)
        with connections[db].cursor() as cursor:
            cursor.execute(f"SELECT {names} FROM {table} WHERE id = ANY(%s)", [ids])
            return cursor.fetchall()
    return _fetch(model.objects.using(db).filter(id__in=ids).order_by().values_list(*columns))


def _json_values(values: list) -> list:
    """Parse many JSON texts in one call (much cheaper than one json.loads each); parsed values pass through."""
    if not values:
        return []
    if all(isinstance(value, str) for value in values):
        return json.loads("[" + ",".join(values) + "]")
    return [json.loads(value) if isinstance(value, str) else value for value in values]


def _in_chunk(
    queryset: QuerySet, ids: list[int], contiguous: bool, column: str = "comparison_id"
) -> QuerySet:
    """Rows of these comparisons: an id range when the chunk is in id order (rows of other comparisons in the
    range are dropped by the caller), else an IN list."""
    if contiguous:
        return queryset.filter(**{f"{column}__gte": ids[0], f"{column}__lte": ids[-1]})
    return queryset.filter(**{f"{column}__in": ids})


class Chunk:
    """One chunk of comparisons as the database gave it, column by column (cheap to build; the pairwise fast path
    reads it directly, the other formats turn it into `Item`s).

    `heads`: (id, prompt id, is gold, expected ranks) in iteration order; `response_ids`: comparison id -> response
    ids in comparison order; `contents`: response id -> text; `votes`: comparison id -> kept (annotator id, ranks)
    in annotator order; `flagged`: comparisons with any flagged or "both bad" vote (kept or not); `details`:
    comparison id -> kept votes in full (raw format only)."""

    __slots__ = (
        "heads",
        "prompts",
        "response_ids",
        "contents",
        "votes",
        "flagged",
        "adjudications",
        "details",
    )

    def __init__(self, heads: list[tuple]):
        self.heads = heads
        self.prompts: dict[int, PromptData] = {}
        self.response_ids: dict[int, list[int]] = {}
        self.contents: dict[int, str] = {}
        self.votes: dict[int, list[tuple[int, dict[str, int]]]] = {}
        self.flagged: set[int] = set()
        self.adjudications: dict[int, dict[str, int]] = {}
        self.details: dict[int, list[VoteDetail]] = {}

    def items(self, *, exclude_flagged: bool) -> list[Item]:
        items = []
        for cid, pid, is_gold, expected in self.heads:
            if exclude_flagged and cid in self.flagged:
                continue
            item = Item(cid, pid, is_gold, expected, self.prompts[pid])
            item.response_ids = self.response_ids.get(cid, [])
            item.contents = [self.contents[rid] for rid in item.response_ids]
            item.votes = self.votes.get(cid, [])
            item.details = self.details.get(cid, [])
            item.adjudication = self.adjudications.get(cid)
            items.append(item)
        return items


def _load_chunk(
    heads: list[tuple[int, int, bool, dict | None]],
    *,
    kept: Q | None,
    details: QuerySet | None,
    adjudications: QuerySet,
    contiguous: bool,
) -> Chunk:
    """The chunk's prompts, responses, votes and adjudications: one query per table. Every vote of the chunk comes
    back with a `flagged` flag and (when there are vote filters) a `kept` flag computed by the database."""
    chunk = Chunk(heads)
    ids = [head[0] for head in heads]
    prompt_rows = _fetch_by_ids(Prompt, ("id", "messages", "domain"), {head[1] for head in heads})
    chunk.prompts = {
        pid: PromptData(messages, domain)
        for (pid, _, domain), messages in zip(
            prompt_rows, _json_values([row[1] for row in prompt_rows]), strict=True
        )
    }
    # Response ids in comparison order, then each response's text once (a response is in several comparisons).
    # Two index scans: joining the texts in one query made the planner scan the whole response table per chunk.
    positions = _fetch(
        _in_chunk(ComparisonResponse.objects.all(), ids, contiguous)
        .order_by("comparison_id", "position")
        .values_list("comparison_id", "response_id")
    )
    response_ids = chunk.response_ids
    for cid, rid in positions:
        rids = response_ids.get(cid)
        if rids is None:
            response_ids[cid] = [rid]
        else:
            rids.append(rid)
    chunk.contents = dict(_fetch_by_ids(Response, ("id", "content"), {rid for _, rid in positions}))
    votes = _in_chunk(Ranking.objects.all(), ids, contiguous).annotate(
        flagged=ExpressionWrapper(FLAGGED, output_field=BooleanField())
    )
    columns = ["comparison_id", "annotator_id", "ranks", "flagged"]
    if kept is not None:
        votes = votes.annotate(kept=ExpressionWrapper(kept, output_field=BooleanField()))
        columns.append("kept")
    vote_rows = _fetch(votes.order_by("comparison_id", "annotator_id").values_list(*columns))
    by_comparison, flagged = chunk.votes, chunk.flagged
    for row, ranks in zip(vote_rows, _json_values([row[2] for row in vote_rows]), strict=True):
        cid = row[0]
        if row[3]:
            flagged.add(cid)
        if kept is None or row[4]:
            kept_votes = by_comparison.get(cid)
            if kept_votes is None:
                by_comparison[cid] = [(row[1], ranks)]
            else:
                kept_votes.append((row[1], ranks))
    if details is not None:
        for row in (
            _in_chunk(details, ids, contiguous)
            .order_by("comparison_id", "annotator_id")
            .values_list(
                "id",
                "comparison_id",
                "annotator_id",
                "ranks",
                "flags",
                "both_bad",
                "seconds_spent",
                "created_at",
                "rationale",
                "display_order",
            )
        ):
            chunk.details.setdefault(row[1], []).append(VoteDetail(row[0], *row[2:]))
    chunk.adjudications = dict(
        _in_chunk(adjudications, ids, contiguous).values_list("comparison_id", "ranks")
    )
    return chunk


def iter_chunks(
    *,
    project: Project,
    filters: PreferenceFilters,
    include_gold: bool,
    by_prompt: bool,
    chunk_size: int,
    with_details: bool,
    key_range: tuple[int, int] | None = None,
) -> Iterator[Chunk]:
    """The project's comparisons after the comparison filters (flagged ones are still in: `exclude_flagged` is
    applied by the consumer, from `Chunk.flagged`), in id order, or (prompt, id) order when `by_prompt`;
    `key_range` (inclusive) keeps only comparison ids, or prompt ids when `by_prompt`, in that range."""
    qualified = qualified_annotator_ids(project=project) if filters.gold_qualified_only else None
    kept = vote_condition(filters=filters, qualified=qualified)
    details = vote_queryset(filters=filters, qualified=qualified) if with_details else None
    adjudications = adjudication_queryset(filters=filters)
    order = ("prompt_id", "id") if by_prompt else ("id",)
    comparisons = comparison_queryset(
        project=project, filters=filters, include_gold=include_gold, flagged_in_sql=False
    )
    if key_range is not None:
        low, high = key_range  # (`__range` is not a lookup of foreign keys)
        comparisons = comparisons.filter(**{f"{order[0]}__gte": low, f"{order[0]}__lte": high})
    heads = (
        comparisons.order_by(*order)
        .values_list("id", "prompt_id", "is_gold", "expected_ranks")
        .iterator(chunk_size=chunk_size)
    )
    while heads_chunk := list(islice(heads, chunk_size)):
        yield _load_chunk(
            heads_chunk, kept=kept, details=details, adjudications=adjudications, contiguous=not by_prompt
        )


def iter_items(*, filters: PreferenceFilters, **options) -> Iterator[tuple[Item, dict]]:
    """`iter_chunks` item by item (flagged comparisons left out when the filters say so), each with its chunk's
    cache of answer fragments."""
    for chunk in iter_chunks(filters=filters, **options):
        cache: dict = {}
        for item in chunk.items(exclude_flagged=filters.exclude_flagged):
            yield item, cache

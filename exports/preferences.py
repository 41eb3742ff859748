"""Preference data out of the labeling tables: the one read path behind exports, the REST API and training-run
dataset snapshots.

Public API (stable; other apps import these names):

- `PreferenceFilters` — frozen dataclass of the filters (with `from_dict` / `to_dict` for storing them as JSON and
  `validated()`), see its docstring for the exact semantics of each field.
- `FORMATS` = ("pairwise", "ranking", "sft", "kto", "raw"), `AGGREGATIONS` = ("majority", "all").
- `iter_preference_rows(*, project, filters=None, format="pairwise", chunk_size=2000) -> Iterator[dict]` — rows in a
  deterministic order, streamed: a server-side cursor over the project's comparisons (`.iterator(chunk_size=…)`)
  and a handful of bulk queries per chunk, so memory stays flat for millions of rankings.
- `preference_counts(*, project, filters=None) -> dict` — cheap live counts (SQL only) for a launch form.
- `content_hash(rows) -> str` and `ContentHasher` — sha256 over the canonical JSON lines of the rows
  (`canonical_json_line`): same filters + same data → same hash, whatever the file type written.
- `annotator_pseudonym(annotator_id) -> str` — the stable keyed hash (HMAC-SHA256 with SECRET_KEY) used for
  annotator ids in the `raw` and `all`-votes rows.

Row shapes (every row also has `comparison_id`, `prompt_id`, `domain`):

- pairwise (TRL conversational preference): `prompt` (messages list), `chosen` / `rejected` (one assistant message
  each), `chosen_id`, `rejected_id`, `margin` (rank distance, float), `source` ("adjudication" | "consensus" |
  "vote"), `annotator` (pseudonym for single votes, else null), `votes`, `agreement`. Ties give no pair.
- ranking (k-way with ties): `prompt`, `responses` (contents in comparison order), `response_ids`, `ranks`
  (1 best, equal = tie), `source`, `annotator`, `votes`, `agreement`.
- sft: `messages` (prompt + the best response as the assistant turn), `response_id`.
- kto (TRL unpaired preference): `prompt`, `completion` (one assistant message), `label` (bool), `response_id`.
- raw: one row per ranking: `ranking_id`, `annotator` (pseudonym), `prompt`, `responses`, `response_ids`, `ranks`,
  `display_order`, `both_bad`, `flags`, `rationale`, `seconds_spent`, `created_at` (ISO 8601), `is_gold`,
  `expected_ranks`, `adjudicated_ranks` (aligned with `response_ids`, null when none).

How judgements are chosen (per comparison; gold comparisons only appear in `raw`, they measure annotators):

- an adjudication (an admin's final ranking) is preferred over the votes whenever there is one;
- aggregation "majority": one consensus ranking per comparison from the votes — responses ordered by their mean
  rank (the Borda count; for two responses this is exactly the majority vote), equal means are ties;
- aggregation "all": every vote is its own judgement (rows carry the annotator pseudonym);
- `sft` and `kto` need a verdict per response, so they work per prompt over all of its comparisons: each judgement
  contributes wins and losses for every strictly ordered pair; a response's net score is wins − losses. `sft` takes
  the prompt's single best response (highest net score, strictly above every other and > 0); `kto` labels
  responses with net > 0 desirable (True) and net < 0 undesirable (False), net 0 is left out.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from itertools import combinations, islice
from json.encoder import encode_basestring as _encode_str
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError
from django.db import connections
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, Max, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from labeling.models import Adjudication, Comparison, ComparisonResponse, Project, Prompt, Ranking, Response
from labeling.pseudonyms import annotator_pseudonym
from labeling.selectors.quality import qualified_annotator_ids

FORMATS: tuple[str, ...] = ("pairwise", "ranking", "sft", "kto", "raw")
AGGREGATIONS: tuple[str, ...] = ("majority", "all")
DEFAULT_CHUNK_SIZE = 2000
_UNSET = object()

# --- filters ----------------------------------------------------------------------------------------------


def _parse_when(value: Any, name: str) -> date | datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime | date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValidationError({name: f"{value!r} is not an ISO date (YYYY-MM-DD) or date-time."})


def _bound(value: date | datetime | None, *, end: bool) -> datetime | None:
    """A datetime bound: a date means the whole day (inclusive at both ends), a naive datetime is in TIME_ZONE."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value)
    day = value + timedelta(days=1) if end else value
    return timezone.make_aware(datetime.combine(day, time.min))


@dataclass(frozen=True)
class PreferenceFilters:
    """Which judgements an export or a training snapshot takes from a project.

    - `date_from` / `date_to`: when a vote was submitted (an adjudication: last changed). A `date` covers the whole
      day at both ends (local TIME_ZONE); a `datetime` is an exact bound, inclusive from, exclusive to.
    - `min_agreement` (0–1): keep comparisons whose pairwise percent agreement among the kept votes is at least
      this; comparisons with fewer than two kept votes have no agreement and are dropped. Adjudicated comparisons
      always pass (the adjudication settled the disagreement).
    - `exclude_flagged`: drop comparisons that any annotator flagged (unsafe, broken, off-topic) or marked "both
      bad" — the item itself is suspect, so this looks at every vote, not only the kept ones.
    - `gold_qualified_only`: keep only votes of annotators whose gold trust reaches the project's threshold.
    - `adjudicated_only`: keep only comparisons with an adjudication.
    - `aggregation`: "majority" (one consensus per comparison) or "all" (every vote).
    """

    date_from: date | datetime | None = None
    date_to: date | datetime | None = None
    min_agreement: float | None = None
    exclude_flagged: bool = True
    gold_qualified_only: bool = False
    adjudicated_only: bool = False
    aggregation: str = "majority"

    def __post_init__(self) -> None:
        object.__setattr__(self, "date_from", _parse_when(self.date_from, "date_from"))
        object.__setattr__(self, "date_to", _parse_when(self.date_to, "date_to"))
        errors: dict[str, str] = {}
        if self.min_agreement is not None:
            try:
                value = float(self.min_agreement)
            except (TypeError, ValueError):
                value = -1.0
            if isinstance(self.min_agreement, bool) or not 0.0 <= value <= 1.0:
                errors["min_agreement"] = "Minimum agreement is a number from 0 to 1."
            else:
                object.__setattr__(self, "min_agreement", value)
        if self.aggregation not in AGGREGATIONS:
            errors["aggregation"] = f"Aggregation is one of {', '.join(AGGREGATIONS)}."
        for name in ("exclude_flagged", "gold_qualified_only", "adjudicated_only"):
            if not isinstance(getattr(self, name), bool):
                errors[name] = "Must be true or false."
        start, stop = _bound(self.date_from, end=False), _bound(self.date_to, end=True)
        if start is not None and stop is not None and start >= stop:
            errors["date_to"] = "The end date is before the start date."
        if errors:
            raise ValidationError(errors)

    @property
    def start(self) -> datetime | None:
        return _bound(self.date_from, end=False)

    @property
    def stop(self) -> datetime | None:
        return _bound(self.date_to, end=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (dates as ISO strings); `from_dict(to_dict())` gives an equal object."""
        data = asdict(self)
        for name in ("date_from", "date_to"):
            if data[name] is not None:
                data[name] = data[name].isoformat()
        return data

    def sentence(self) -> str:
        """What these filters keep, in words a reader of a run or an export page uses."""
        parts = [
            "every vote" if self.aggregation == "all" else "the majority ranking of each comparison",
            "adjudicated comparisons only" if self.adjudicated_only else "",
            "votes of gold-qualified annotators only" if self.gold_qualified_only else "",
            f"agreement at least {self.min_agreement:.0%}" if self.min_agreement is not None else "",
            "flagged and both-bad items left out" if self.exclude_flagged else "flagged items kept",
        ]
        if self.date_from and self.date_to:
            parts.append(f"submitted from {self.date_from.isoformat()} to {self.date_to.isoformat()}")
        elif self.date_from:
            parts.append(f"submitted from {self.date_from.isoformat()} on")
        elif self.date_to:
            parts.append(f"submitted until {self.date_to.isoformat()}")
        text = ", ".join(part for part in parts if part)
        return text[0].upper() + text[1:] + "."

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PreferenceFilters:
        """Build from stored JSON or a request; unknown keys are an error, missing keys take the defaults."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError({unknown[0]: "Unknown filter."})
        return cls(**data)


# --- hashing and pseudonyms ------------------------------------------------------------------------------


def canonical_json_line(row: Mapping[str, Any]) -> str:
    """The canonical serialisation of one row (sorted keys, no spaces, UTF-8 text), without the newline."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class ContentHasher:
    """Incremental `content_hash`: feed rows (or their canonical lines) as they are written."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.rows = 0

    def update_line(self, line: str) -> None:
        self._sha.update(line.encode())
        self._sha.update(b"\n")
        self.rows += 1

    def update_block(self, data: bytes, rows: int) -> None:
        """A block of canonical lines as UTF-8 bytes, each with its newline (what the JSONL writer writes)."""
        self._sha.update(data)
        self.rows += rows

    def update_lines(self, lines: list[str]) -> None:
        """Many canonical lines at once (one encode and one digest update: the fast path of the writers)."""
        if lines:
            self._sha.update(("\n".join(lines) + "\n").encode())
            self.rows += len(lines)

    def update(self, row: Mapping[str, Any]) -> None:
        self.update_line(canonical_json_line(row))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def content_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 (hex) over the rows' canonical JSON lines, each followed by a newline, in order."""
    hasher = ContentHasher()
    for row in rows:
        hasher.update(row)
    return hasher.hexdigest()


# --- loading comparisons in chunks -------------------------------------------------------------------------


@dataclass(slots=True)
class _VoteDetail:
    ranking_id: int
    annotator_id: int
    ranks: dict[str, int]
    flags: list[str]
    both_bad: bool
    seconds_spent: float
    created_at: datetime
    rationale: str
    display_order: list[int]


class _Item:
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
        "_agreement",
        "_answers",
    )

    def __init__(self, id: int, prompt_id: int, is_gold: bool, expected_ranks, prompt: _PromptData):  # noqa: A002
        self.id = id
        self.prompt_id = prompt_id
        self.is_gold = is_gold
        self.expected_ranks = expected_ranks
        self.prompt = prompt
        self.response_ids: list[int] = []  # comparison order (position)
        self.contents: list[str] = []
        self.votes: list[tuple[int, dict[str, int]]] = []  # (annotator id, ranks)
        self.details: list[_VoteDetail] = []  # raw format only
        self.adjudication: dict[str, int] | None = None
        self._agreement: Any = _UNSET
        self._answers: list[str] | None = None

    @property
    def messages(self) -> list[dict]:
        return self.prompt.messages

    @property
    def domain(self) -> str:
        return self.prompt.domain

    @property
    def agreement(self) -> float | None:
        if self._agreement is _UNSET:
            self._agreement = _agreement(self.votes, self.response_ids)
        return self._agreement

    def answers_json(self, cache: dict[int, str]) -> list[str]:
        """Canonical JSON of each response as a one-message assistant turn (cached per response in a chunk)."""
        if self._answers is None:
            answers = []
            for rid, content in zip(self.response_ids, self.contents, strict=True):
                text = cache.get(rid)
                if text is None:
                    text = cache[rid] = _assistant_json(content)
                answers.append(text)
            self._answers = answers
        return self._answers


@dataclass(slots=True)
class _PromptData:
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


def _comparison_queryset(
    *, project: Project, filters: PreferenceFilters, include_gold: bool, flagged_in_sql: bool = True
) -> QuerySet:
    """The project's comparisons after the comparison filters. `flagged_in_sql=False` leaves `exclude_flagged` to
    the caller (the row iterator sees every vote of a chunk anyway: a per-comparison NOT EXISTS costs more)."""
    queryset = Comparison.objects.filter(project=project)
    if not include_gold:
        queryset = queryset.filter(is_gold=False)
    if filters.adjudicated_only:
        queryset = queryset.filter(adjudication__isnull=False)
    if filters.exclude_flagged and flagged_in_sql:
        flagged = Ranking.objects.filter(comparison=OuterRef("pk")).filter(~Q(flags=[]) | Q(both_bad=True))
        queryset = queryset.filter(~Exists(flagged))
    return queryset


_FLAGGED = ~Q(flags=[]) | Q(both_bad=True)


def _vote_q(*, filters: PreferenceFilters, qualified: set[int] | None) -> Q | None:
    """The vote filters (date range, qualified annotators) as one condition; None when there are none."""
    conditions = []
    if filters.start is not None:
        conditions.append(Q(created_at__gte=filters.start))
    if filters.stop is not None:
        conditions.append(Q(created_at__lt=filters.stop))
    if qualified is not None:
        conditions.append(Q(annotator_id__in=qualified))
    if not conditions:
        return None
    condition = conditions[0]
    for more in conditions[1:]:
        condition &= more
    return condition


def _vote_queryset(*, filters: PreferenceFilters, qualified: set[int] | None) -> QuerySet:
    condition = _vote_q(filters=filters, qualified=qualified)
    queryset = Ranking.objects.all()
    return queryset if condition is None else queryset.filter(condition)


def _adjudication_queryset(*, filters: PreferenceFilters) -> QuerySet:
    queryset = Adjudication.objects.all()
    if filters.start is not None:
        queryset = queryset.filter(updated_at__gte=filters.start)
    if filters.stop is not None:
        queryset = queryset.filter(updated_at__lt=filters.stop)
    return queryset


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


class _Chunk:
    """One chunk of comparisons as the database gave it, column by column (cheap to build; the pairwise fast path
    reads it directly, the other formats turn it into `_Item`s).

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
        self.prompts: dict[int, _PromptData] = {}
        self.response_ids: dict[int, list[int]] = {}
        self.contents: dict[int, str] = {}
        self.votes: dict[int, list[tuple[int, dict[str, int]]]] = {}
        self.flagged: set[int] = set()
        self.adjudications: dict[int, dict[str, int]] = {}
        self.details: dict[int, list[_VoteDetail]] = {}

    def items(self, *, exclude_flagged: bool) -> list[_Item]:
        items = []
        for cid, pid, is_gold, expected in self.heads:
            if exclude_flagged and cid in self.flagged:
                continue
            item = _Item(cid, pid, is_gold, expected, self.prompts[pid])
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
) -> _Chunk:
    """The chunk's prompts, responses, votes and adjudications: one query per table. Every vote of the chunk comes
    back with a `flagged` flag and (when there are vote filters) a `kept` flag computed by the database."""
    chunk = _Chunk(heads)
    ids = [head[0] for head in heads]
    prompt_rows = _fetch_by_ids(Prompt, ("id", "messages", "domain"), {head[1] for head in heads})
    chunk.prompts = {
        pid: _PromptData(messages, domain)
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
        flagged=ExpressionWrapper(_FLAGGED, output_field=BooleanField())
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
            chunk.details.setdefault(row[1], []).append(_VoteDetail(row[0], *row[2:]))
    chunk.adjudications = dict(
        _in_chunk(adjudications, ids, contiguous).values_list("comparison_id", "ranks")
    )
    return chunk


def _iter_chunks(
    *,
    project: Project,
    filters: PreferenceFilters,
    include_gold: bool,
    by_prompt: bool,
    chunk_size: int,
    with_details: bool,
    key_range: tuple[int, int] | None = None,
) -> Iterator[_Chunk]:
    """The project's comparisons after the comparison filters (flagged ones are still in: `exclude_flagged` is
    applied by the consumer, from `_Chunk.flagged`), in id order, or (prompt, id) order when `by_prompt`;
    `key_range` (inclusive) keeps only comparison ids, or prompt ids when `by_prompt`, in that range."""
    qualified = qualified_annotator_ids(project=project) if filters.gold_qualified_only else None
    kept = _vote_q(filters=filters, qualified=qualified)
    details = _vote_queryset(filters=filters, qualified=qualified) if with_details else None
    adjudications = _adjudication_queryset(filters=filters)
    order = ("prompt_id", "id") if by_prompt else ("id",)
    comparisons = _comparison_queryset(
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


def _iter_items(*, filters: PreferenceFilters, **options) -> Iterator[tuple[_Item, dict]]:
    """`_iter_chunks` item by item (flagged comparisons left out when the filters say so), each with its chunk's
    cache of answer fragments."""
    for chunk in _iter_chunks(filters=filters, **options):
        cache: dict = {}
        for item in chunk.items(exclude_flagged=filters.exclude_flagged):
            yield item, cache


# --- judgements ---------------------------------------------------------------------------------------------


class _Judgement(NamedTuple):
    source: str  # adjudication | consensus | vote
    ranks: dict[str, int]
    annotator: str | None
    votes: int
    agreement: float | None


def _agreement(votes: list[tuple[int, dict[str, int]]], response_ids: list[int]) -> float | None:
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


def _consensus(votes: list[tuple[int, dict[str, int]]]) -> dict[str, int]:
    """Dense ranks by total (equivalently mean) rank over the votes; equal totals tie."""
    totals: dict[str, int] = defaultdict(int)
    for _, ranks in votes:
        for rid, rank in ranks.items():
            totals[rid] += rank
    levels = {total: index + 1 for index, total in enumerate(sorted(set(totals.values())))}
    return {rid: levels[total] for rid, total in totals.items()}


def _judgements(item: _Item, filters: PreferenceFilters, pseudonyms: _Pseudonyms) -> list[_Judgement]:
    return _judge(item.adjudication, item.votes, item.response_ids, filters, pseudonyms)


def _judge(
    adjudication: dict[str, int] | None,
    votes: list[tuple[int, dict[str, int]]],
    response_ids: list[int],
    filters: PreferenceFilters,
    pseudonyms: _Pseudonyms,
) -> list[_Judgement]:
    """The judgements one comparison gives (see the module docstring), from its adjudication and kept votes."""
    if adjudication is not None:
        agreement = _agreement(votes, response_ids)
        return [_Judgement("adjudication", adjudication, None, len(votes), agreement)]
    if filters.adjudicated_only or not votes:
        return []
    agreement = _agreement(votes, response_ids)
    if filters.min_agreement is not None and (agreement is None or agreement < filters.min_agreement):
        return []
    if filters.aggregation == "majority":
        return [_Judgement("consensus", _consensus(votes), None, len(votes), agreement)]
    return [
        _Judgement("vote", ranks, pseudonyms(annotator_id), len(votes), agreement)
        for annotator_id, ranks in votes
    ]


class _Pseudonyms:
    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, annotator_id: int) -> str:
        name = self._cache.get(annotator_id)
        if name is None:
            name = self._cache[annotator_id] = annotator_pseudonym(annotator_id)
        return name


def _assistant(content: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": content}]


def _assistant_json(content: str) -> str:
    """canonical_json_line(_assistant(content)), without building the list: json.dumps(ensure_ascii=False) encodes
    a str with exactly this function (the C `encode_basestring`)."""
    return '[{"content":' + _encode_str(content) + ',"role":"assistant"}]'


def _json_number(value: float | int | None) -> str:
    if value is None:
        return "null"
    return float.__repr__(value) if isinstance(value, float) else int.__repr__(value)


# --- records: what a format yields before it becomes a dict or a JSON line ---------------------------------


class _Pair(NamedTuple):
    item: _Item
    judgement: _Judgement
    win: int
    lose: int
    cache: dict[int, str]


def _pair_row(pair: _Pair) -> dict:
    item, judgement, win, lose = pair.item, pair.judgement, pair.win, pair.lose
    a, b = judgement.ranks[str(item.response_ids[win])], judgement.ranks[str(item.response_ids[lose])]
    return {
        "prompt": item.messages,
        "chosen": _assistant(item.contents[win]),
        "rejected": _assistant(item.contents[lose]),
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


def _pair_line(pair: _Pair) -> str:
    """canonical_json_line(_pair_row(pair)), built from cached fragments (the hot path of big exports)."""
    item, judgement, win, lose = pair.item, pair.judgement, pair.win, pair.lose
    answers = item.answers_json(pair.cache)
    ids = item.response_ids
    margin = float(judgement.ranks[str(ids[lose])] - judgement.ranks[str(ids[win])])
    annotator = "null" if judgement.annotator is None else f'"{judgement.annotator}"'
    return (
        f'{{"agreement":{_json_number(judgement.agreement)},"annotator":{annotator},"chosen":{answers[win]},'
        f'"chosen_id":{ids[win]},"comparison_id":{item.id},"domain":{item.prompt.domain_json},'
        f'"margin":{float.__repr__(margin)},"prompt":{item.prompt.messages_json},"prompt_id":{item.prompt_id},'
        f'"rejected":{answers[lose]},"rejected_id":{ids[lose]},"source":"{judgement.source}",'
        f'"votes":{judgement.votes}}}'
    )


def _pair_meta(pair: _Pair) -> tuple:
    judgement = pair.judgement
    return (pair.item.id, pair.item.prompt_id, judgement.source, None, pair.item.domain, judgement.agreement)


def _row_meta(row: dict) -> tuple:
    key = row.get("comparison_id")
    if key is None:  # sft / kto rows stand for a prompt
        key = ("prompt", row["prompt_id"])
    return (key, row["prompt_id"], row.get("source"), row.get("label"), row["domain"], row.get("agreement"))


@dataclass(frozen=True)
class RecordCodec:
    """How a format's records become rows (dicts), canonical JSON lines, and card statistics."""

    to_row: Any
    to_line: Any
    meta: Any  # (group key, prompt id, source, label, domain, agreement)


def _identity(row: dict) -> dict:
    return row


RECORD_CODECS: dict[str, RecordCodec] = {
    "pairwise": RecordCodec(_pair_row, _pair_line, _pair_meta),
    **{
        name: RecordCodec(_identity, canonical_json_line, _row_meta)
        for name in ("ranking", "sft", "kto", "raw")
    },
}


def _pairs(item: _Item, judgement: _Judgement, cache: dict[int, str]) -> Iterator[_Pair]:
    ranks = judgement.ranks
    keys = [str(rid) for rid in item.response_ids]
    for i, j in combinations(range(len(keys)), 2):
        a, b = ranks[keys[i]], ranks[keys[j]]
        if a != b:
            yield _Pair(item, judgement, i, j, cache) if a < b else _Pair(item, judgement, j, i, cache)


def _ranking_row(item: _Item, judgement: _Judgement) -> dict:
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


def _aligned(ranks: Mapping[str, int] | None, response_ids: list[int]) -> list[int] | None:
    if ranks is None:
        return None
    return [ranks.get(str(rid)) for rid in response_ids]


def _raw_rows(item: _Item, filters: PreferenceFilters, pseudonyms: _Pseudonyms) -> Iterator[dict]:
    if filters.adjudicated_only and item.adjudication is None:
        return
    agreement = item.agreement
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


def _prompt_groups(items: Iterator[tuple[_Item, dict]]) -> Iterator[list[_Item]]:
    group: list[_Item] = []
    for item, _ in items:
        if group and group[0].prompt_id != item.prompt_id:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _net_scores(group: list[_Item], filters: PreferenceFilters, pseudonyms: _Pseudonyms) -> dict[int, int]:
    net: dict[int, int] = defaultdict(int)
    for item in group:
        for judgement in _judgements(item, filters, pseudonyms):
            for i, j in combinations(item.response_ids, 2):
                a, b = judgement.ranks[str(i)], judgement.ranks[str(j)]
                if a != b:
                    win, lose = (i, j) if a < b else (j, i)
                    net[win] += 1
                    net[lose] -= 1
    return net


def _contents(group: list[_Item]) -> dict[int, str]:
    return {
        rid: content for item in group for rid, content in zip(item.response_ids, item.contents, strict=True)
    }


def _sft_rows(group: list[_Item], filters: PreferenceFilters, pseudonyms: _Pseudonyms) -> Iterator[dict]:
    net = _net_scores(group, filters, pseudonyms)
    if not net:
        return
    ordered = sorted(net.items(), key=lambda pair: (-pair[1], pair[0]))
    best, score = ordered[0]
    if score <= 0 or (len(ordered) > 1 and ordered[1][1] == score):
        return
    first = group[0]
    yield {
        "messages": [*first.messages, *_assistant(_contents(group)[best])],
        "response_id": best,
        "domain": first.domain,
        "prompt_id": first.prompt_id,
        "comparison_ids": [item.id for item in group],
        "net_wins": score,
    }


def _kto_rows(group: list[_Item], filters: PreferenceFilters, pseudonyms: _Pseudonyms) -> Iterator[dict]:
    net = _net_scores(group, filters, pseudonyms)
    contents = _contents(group)
    first = group[0]
    for rid in sorted(net):
        if net[rid] == 0:
            continue
        yield {
            "prompt": first.messages,
            "completion": _assistant(contents[rid]),
            "label": net[rid] > 0,
            "response_id": rid,
            "domain": first.domain,
            "prompt_id": first.prompt_id,
            "comparison_ids": [item.id for item in group],
            "net_wins": net[rid],
        }


def _reading(format: str) -> dict[str, bool]:  # noqa: A002 - the public name of the option
    """How a format reads comparisons (`_iter_chunks` options): raw includes gold items and every vote's details;
    sft and kto group rows by prompt, so they read in (prompt, id) order and slice by prompt id."""
    return {
        "include_gold": format == "raw",
        "by_prompt": format in ("sft", "kto"),
        "with_details": format == "raw",
    }


def _check_options(format: str, chunk_size: int) -> None:  # noqa: A002 - the public name of the option
    if format not in FORMATS:
        raise ValidationError({"format": f"Format is one of {', '.join(FORMATS)}."})
    if chunk_size < 1:
        raise ValidationError({"chunk_size": "Chunk size must be positive."})


def iter_preference_records(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",  # noqa: A002 - the public name of the option
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_range: tuple[int, int] | None = None,
) -> Iterator[Any]:
    """The format's records in order; `RECORD_CODECS[format]` turns each into a row, a canonical line, stats.

    For writers that need both rows and lines cheaply; everyone else uses `iter_preference_rows`. `key_range`
    (inclusive) keeps one slice of the export: comparison ids, or prompt ids for sft and kto (`partition_key`).
    """
    filters = filters or PreferenceFilters()
    _check_options(format, chunk_size)
    pseudonyms = _Pseudonyms()
    items = _iter_items(
        project=project, filters=filters, chunk_size=chunk_size, key_range=key_range, **_reading(format)
    )
    if format == "raw":
        for item, _ in items:
            yield from _raw_rows(item, filters, pseudonyms)
    elif format == "pairwise":
        for item, cache in items:
            for judgement in _judgements(item, filters, pseudonyms):
                yield from _pairs(item, judgement, cache)
    elif format == "ranking":
        for item, _ in items:
            for judgement in _judgements(item, filters, pseudonyms):
                yield _ranking_row(item, judgement)
    else:
        make = _sft_rows if format == "sft" else _kto_rows
        for group in _prompt_groups(items):
            yield from make(group, filters, pseudonyms)


def partition_key(format: str) -> str:  # noqa: A002 - the public name of the option
    """What `key_range` slices: "prompt" for the formats that group by prompt (sft, kto), else "comparison"."""
    return "prompt" if _reading(format)["by_prompt"] else "comparison"


class KeySpan(NamedTuple):
    low: int
    high: int
    comparisons: int


def comparison_key_span(
    *,
    project: Project,
    filters: PreferenceFilters,
    format: str,  # noqa: A002 - the public name of the option
) -> KeySpan | None:
    """The smallest and largest `partition_key` value among the comparisons the export reads, and how many
    comparisons that is (flagged ones included); None if there are none."""
    reading = _reading(format)
    field_name = "prompt_id" if reading["by_prompt"] else "id"
    span = _comparison_queryset(
        project=project, filters=filters, include_gold=reading["include_gold"], flagged_in_sql=False
    ).aggregate(low=Min(field_name), high=Max(field_name), comparisons=Count("id"))
    return None if span["low"] is None else KeySpan(**span)


@dataclass
class CardStats:
    """Dataset-card statistics, collected while rows stream by (rows are grouped by comparison or by prompt, so no
    id set is kept). The agreement sum is kept in integer millionths (agreements are rounded to 6 decimals), so
    that stats of consecutive slices merge into exactly the stats of the whole."""

    rows: int = 0
    comparisons: int = 0
    prompts: int = 0
    sources: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    domains: Counter = field(default_factory=Counter)
    agreement_micros: int = 0
    agreement_n: int = 0
    first_comparison: Any = None
    first_prompt: Any = None
    last_comparison: Any = None
    last_prompt: Any = None

    def add(self, meta: tuple, rows: int = 1) -> None:
        """`meta` is RECORD_CODECS[format].meta(record): (group key, prompt id, source, label, domain, agreement);
        `rows` consecutive rows with the same meta count as `rows` calls."""
        key, prompt_id, source, label, domain, agreement = meta
        if not self.rows:
            self.first_comparison, self.first_prompt = key, prompt_id
        self.rows += rows
        if key != self.last_comparison:
            self.last_comparison = key
            self.comparisons += 1
            if agreement is not None:
                self.agreement_micros += round(agreement * 1_000_000)
                self.agreement_n += 1
        if prompt_id != self.last_prompt:
            self.last_prompt = prompt_id
            self.prompts += 1
        if source is not None:
            self.sources[source] += rows
        if label is not None:
            self.labels["desirable" if label else "undesirable"] += rows
        self.domains[domain or "(none)"] += rows

    def merge(self, after: CardStats) -> None:
        """Add the stats of the rows that directly follow these rows (a group never spans two slices)."""
        if not after.rows:
            return
        if not self.rows:
            self.first_comparison, self.first_prompt = after.first_comparison, after.first_prompt
        self.rows += after.rows
        self.comparisons += after.comparisons - (after.first_comparison == self.last_comparison)
        self.prompts += after.prompts - (after.first_prompt == self.last_prompt)
        self.sources.update(after.sources)
        self.labels.update(after.labels)
        self.domains.update(after.domains)
        self.agreement_micros += after.agreement_micros
        self.agreement_n += after.agreement_n
        self.last_comparison, self.last_prompt = after.last_comparison, after.last_prompt

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (for stats sent between processes); `from_json` reverses it."""
        # Not `asdict`: it rebuilds a Counter from (key, count) pairs, counting the pairs.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update({name: dict(data[name]) for name in ("sources", "labels", "domains")})
        for name in ("first_comparison", "last_comparison"):  # ("prompt", id) keys of sft / kto rows
            if isinstance(data[name], tuple):
                data[name] = {"prompt": data[name][1]}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CardStats:
        data = dict(data)
        for name in ("sources", "labels", "domains"):
            data[name] = Counter(data[name])
        for name in ("first_comparison", "last_comparison"):
            if isinstance(data[name], dict):
                data[name] = ("prompt", data[name]["prompt"])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        mean = self.agreement_micros / self.agreement_n / 1_000_000 if self.agreement_n else None
        return {
            "rows": self.rows,
            "comparisons": self.comparisons,
            "prompt_groups": self.prompts,
            "sources": dict(sorted(self.sources.items())),
            "labels": dict(sorted(self.labels.items())),
            "domains": dict(self.domains.most_common(20)),
            "mean_agreement": None if mean is None else round(mean, 4),
            "comparisons_with_agreement": self.agreement_n,
        }


_PAIR_INDEXES = {k: tuple(combinations(range(k), 2)) for k in range(2, 17)}
_MARGINS = {d: float.__repr__(float(d)).encode() for d in range(1, 17)}


def _pairwise_block(
    chunk: _Chunk,
    filters: PreferenceFilters,
    pseudonyms: _Pseudonyms,
    stats: CardStats,
) -> tuple[bytes, int]:
    """A chunk's pairwise rows as canonical JSON lines (UTF-8, each with its newline), assembled from byte
    fragments cached per response, comparison and judgement: the bytes of `canonical_json_line(_pair_row(pair))`
    for each pair, in `_pairs` order, without building a row, a line or an `_Item` per pair (the hot path of big
    exports; `tests/exports/test_export_bytes.py` holds it to the definition)."""
    parts: list[bytes] = []
    rows = 0
    answers: dict[
        int, tuple[bytes, bytes]
    ] = {}  # response id -> (chosen…"chosen_id":N, rejected…"rejected_id":N)
    heads: dict[tuple, bytes] = {}  # (agreement, annotator) -> '{"agreement":…,"annotator":…,"chosen":'
    tails: dict[tuple, bytes] = {}  # (source, votes) -> ',"source":…,"votes":…}\n'
    exclude_flagged, flagged = filters.exclude_flagged, chunk.flagged
    all_votes, adjudications, all_response_ids = chunk.votes, chunk.adjudications, chunk.response_ids
    for cid, pid, _, _ in chunk.heads:
        if exclude_flagged and cid in flagged:
            continue
        ids = all_response_ids.get(cid, [])
        judgements = _judge(adjudications.get(cid), all_votes.get(cid, []), ids, filters, pseudonyms)
        if not judgements:
            continue
        chosen, rejected = [], []
        for rid in ids:
            answer = answers.get(rid)
            if answer is None:
                text = _assistant_json(chunk.contents[rid]).encode()
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
                    % (_json_number(judgement.agreement).encode(), annotator)
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


def iter_preference_blocks(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",  # noqa: A002 - the public name of the option
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    stats: CardStats | None = None,
    block_rows: int = 1000,
    key_range: tuple[int, int] | None = None,
) -> Iterator[tuple[bytes, int]]:
    """The export's JSONL bytes in blocks of (data, rows): the concatenation of all blocks is exactly
    `"".join(canonical_json_line(row) + "\n" for row in rows).encode()`. `stats` is updated as blocks are made.

    pairwise is assembled from byte fragments a chunk at a time; the other formats join their canonical lines
    about `block_rows` rows at a time. `key_range` as in `iter_preference_records`."""
    filters = filters or PreferenceFilters()
    stats = stats if stats is not None else CardStats()
    _check_options(format, chunk_size)
    if format == "pairwise":
        pseudonyms = _Pseudonyms()
        for chunk in _iter_chunks(
            project=project, filters=filters, chunk_size=chunk_size, key_range=key_range, **_reading(format)
        ):
            data, rows = _pairwise_block(chunk, filters, pseudonyms, stats)
            if rows:
                yield data, rows
        return
    codec = RECORD_CODECS[format]
    records = iter_preference_records(
        project=project, filters=filters, format=format, chunk_size=chunk_size, key_range=key_range
    )
    lines: list[str] = []
    for record in records:
        lines.append(codec.to_line(record))
        stats.add(codec.meta(record))
        if len(lines) >= block_rows:
            lines.append("")
            yield "\n".join(lines).encode(), len(lines) - 1
            lines = []
    if lines:
        lines.append("")
        yield "\n".join(lines).encode(), len(lines) - 1


def iter_preference_rows(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",  # noqa: A002 - the public name of the option
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[dict]:
    """Stream the project's preference rows in `format` (see the module docstring), deterministic order."""
    to_row = RECORD_CODECS[format].to_row if format in RECORD_CODECS else _identity
    for record in iter_preference_records(
        project=project, filters=filters, format=format, chunk_size=chunk_size
    ):
        yield to_row(record)


def iter_preference_lines(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",  # noqa: A002 - the public name of the option
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[str]:
    """The rows as canonical JSON lines (no newline): exactly `canonical_json_line(row)` for each row, faster."""
    to_line = RECORD_CODECS[format].to_line if format in RECORD_CODECS else canonical_json_line
    for record in iter_preference_records(
        project=project, filters=filters, format=format, chunk_size=chunk_size
    ):
        yield to_line(record)


def preference_counts(*, project: Project, filters: PreferenceFilters | None = None) -> dict[str, int]:
    """Live counts for a launch form, from a few SQL aggregates (no row is materialised).

    - `comparisons`: non-gold comparisons passing the comparison filters (flagged, adjudicated only) that have an
      adjudication or at least one kept vote (date range, qualified annotators);
    - `adjudicated`: of those, how many have an adjudication; `votes`: kept votes on them; `annotators`: distinct;
    - `max_pairs`: the pairs a pairwise export gives at most (per judgement, k·(k−1)/2; min agreement and ties
      only lower it).
    """
    filters = filters or PreferenceFilters()
    qualified = qualified_annotator_ids(project=project) if filters.gold_qualified_only else None
    votes = _vote_queryset(filters=filters, qualified=qualified).filter(comparison=OuterRef("pk"))
    adjudications = _adjudication_queryset(filters=filters).filter(comparison=OuterRef("pk"))
    comparisons = _comparison_queryset(project=project, filters=filters, include_gold=False).alias(
        has_votes=Exists(votes), has_adjudication=Exists(adjudications)
    )
    if filters.adjudicated_only:
        comparisons = comparisons.filter(has_adjudication=True)
    else:
        comparisons = comparisons.filter(Q(has_votes=True) | Q(has_adjudication=True))
    by_k = list(
        comparisons.order_by()
        .values("k")
        .annotate(n=Count("id"), adjudicated=Count("id", filter=Q(has_adjudication=True)))
    )
    kept_votes = _vote_queryset(filters=filters, qualified=qualified).filter(
        comparison__in=comparisons.values("id")
    )
    votes_by_k = dict(
        kept_votes.order_by()
        .values("comparison__k")
        .annotate(n=Count("id"))
        .values_list("comparison__k", "n")
    )
    unadjudicated_votes_by_k = {}
    if filters.aggregation == "all" and not filters.adjudicated_only:
        unadjudicated = comparisons.filter(has_adjudication=False).values("id")
        unadjudicated_votes_by_k = dict(
            kept_votes.filter(comparison__in=unadjudicated)
            .order_by()
            .values("comparison__k")
            .annotate(n=Count("id"))
            .values_list("comparison__k", "n")
        )
    max_pairs = 0
    for row in by_k:
        k, n, adjudicated = row["k"], row["n"], row["adjudicated"]
        if filters.aggregation == "majority" or filters.adjudicated_only:
            judgements = n
        else:
            judgements = adjudicated + unadjudicated_votes_by_k.get(k, 0)
        max_pairs += judgements * k * (k - 1) // 2
    return {
        "comparisons": sum(row["n"] for row in by_k),
        "adjudicated": sum(row["adjudicated"] for row in by_k),
        "votes": sum(votes_by_k.values()),
        "annotators": kept_votes.order_by().values("annotator_id").distinct().count(),
        "max_pairs": max_pairs,
    }

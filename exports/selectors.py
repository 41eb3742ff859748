"""Preference data out of the labeling tables: the one read path behind exports, the REST API and training-run
dataset snapshots.

Public API (other apps import these names):

- `iter_preference_rows(*, project, filters=None, format="pairwise", chunk_size=2000) -> Iterator[dict]`: rows in a
  deterministic order, streamed (`exports.loading`), so memory stays flat for millions of rankings; the row shapes
  are in `exports.formats`, the rules that choose judgements in `exports.judgements`, the filters in
  `exports.filters.PreferenceFilters`.
- `iter_preference_lines`, `iter_preference_blocks`, `iter_preference_records`: the same rows as canonical JSON
  lines, as JSONL bytes, or as the formats' records (what the writers use).
- `preference_counts(*, project, filters=None) -> dict`: cheap live counts (SQL only) for a launch form;
  `export_estimate`: an upper bound of an export's rows (progress bars).
- `comparison_key_span`: the key span a parallel export slices into ranges (`exports.parallel`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, Max, Min, OuterRef, Q

from exports.filters import PreferenceFilters, adjudication_queryset, comparison_queryset, vote_queryset
from exports.formats import format_spec
from exports.formats.base import Format
from exports.hashing import Pseudonyms
from exports.loading import DEFAULT_CHUNK_SIZE, iter_chunks, iter_items
from exports.stats import CardStats
from labeling.models import Project, Prompt, Ranking, Response
from labeling.selectors.quality import qualified_annotator_ids


def _checked_format(format: str, chunk_size: int) -> Format:
    spec = format_spec(format)
    if chunk_size < 1:
        raise ValidationError({"chunk_size": "Chunk size must be positive."})
    return spec


def iter_preference_records(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_range: tuple[int, int] | None = None,
) -> Iterator[Any]:
    """The format's records in order; `RECORD_CODECS[format]` turns each into a row, a canonical line, stats.

    For writers that need both rows and lines cheaply; everyone else uses `iter_preference_rows`. `key_range`
    (inclusive) keeps one slice of the export: comparison ids, or prompt ids for the formats that group rows by
    prompt (sft, kto: `Format.by_prompt`).
    """
    filters = filters or PreferenceFilters()
    spec = _checked_format(format, chunk_size)
    items = iter_items(
        project=project, filters=filters, chunk_size=chunk_size, key_range=key_range, **spec.reading()
    )
    yield from spec.records(items, filters, Pseudonyms())


class KeySpan(NamedTuple):
    low: int
    high: int
    comparisons: int


def comparison_key_span(*, project: Project, filters: PreferenceFilters, format: str) -> KeySpan | None:
    """The smallest and largest `key_range` value (comparison id, or prompt id for sft and kto) among the
    comparisons the export reads, and how many comparisons that is (flagged ones included); None if there are
    none."""
    spec = format_spec(format)
    field_name = "prompt_id" if spec.by_prompt else "id"
    span = comparison_queryset(
        project=project, filters=filters, include_gold=spec.include_gold, flagged_in_sql=False
    ).aggregate(low=Min(field_name), high=Max(field_name), comparisons=Count("id"))
    return None if span["low"] is None else KeySpan(**span)


def iter_preference_blocks(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    stats: CardStats | None = None,
    block_rows: int = 1000,
    key_range: tuple[int, int] | None = None,
) -> Iterator[tuple[bytes, int]]:
    """The export's JSONL bytes in blocks of (data, rows): the concatenation of all blocks is exactly
    `"".join(canonical_json_line(row) + "\n" for row in rows).encode()`. `stats` is updated as blocks are made.

    A format with a `blocks` fast path (pairwise) assembles a chunk at a time from byte fragments; the others join
    their canonical lines about `block_rows` rows at a time. `key_range` as in `iter_preference_records`."""
    filters = filters or PreferenceFilters()
    stats = stats if stats is not None else CardStats()
    spec = _checked_format(format, chunk_size)
    if spec.blocks is not None:
        pseudonyms = Pseudonyms()
        for chunk in iter_chunks(
            project=project, filters=filters, chunk_size=chunk_size, key_range=key_range, **spec.reading()
        ):
            data, rows = spec.blocks(chunk, filters, pseudonyms, stats)
            if rows:
                yield data, rows
        return
    to_line, meta = spec.codec.to_line, spec.codec.meta
    records = iter_preference_records(
        project=project, filters=filters, format=format, chunk_size=chunk_size, key_range=key_range
    )
    lines: list[str] = []
    for record in records:
        lines.append(to_line(record))
        stats.add(meta(record))
        if len(lines) >= block_rows:
            lines.append("")
            yield "\n".join(lines).encode(), len(lines) - 1
            lines = []
    if lines:
        lines.append("")
        yield "\n".join(lines).encode(), len(lines) - 1


def _iter_converted(
    *, project: Project, filters: PreferenceFilters | None, format: str, chunk_size: int, to: str
) -> Iterator[Any]:
    """The records, each through the format's codec `to` ("to_row" or "to_line")."""
    convert = getattr(format_spec(format).codec, to)
    for record in iter_preference_records(
        project=project, filters=filters, format=format, chunk_size=chunk_size
    ):
        yield convert(record)


def iter_preference_rows(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[dict]:
    """Stream the project's preference rows in `format` (see `exports.formats`), in a deterministic order."""
    return _iter_converted(
        project=project, filters=filters, format=format, chunk_size=chunk_size, to="to_row"
    )


def iter_preference_lines(
    *,
    project: Project,
    filters: PreferenceFilters | None = None,
    format: str = "pairwise",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[str]:
    """The rows as canonical JSON lines (no newline): exactly `canonical_json_line(row)` for each row, faster."""
    return _iter_converted(
        project=project, filters=filters, format=format, chunk_size=chunk_size, to="to_line"
    )


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
    votes = vote_queryset(filters=filters, qualified=qualified).filter(comparison=OuterRef("pk"))
    adjudications = adjudication_queryset(filters=filters).filter(comparison=OuterRef("pk"))
    comparisons = comparison_queryset(project=project, filters=filters, include_gold=False).alias(
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
    kept_votes = vote_queryset(filters=filters, qualified=qualified).filter(
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


def export_estimate(
    *, project: Project, format: str, filters: PreferenceFilters, counts: dict[str, int] | None = None
) -> int:
    """An upper bound of the rows (for progress bars): exact for raw, from `preference_counts` otherwise."""
    if format == "raw":
        return Ranking.objects.filter(comparison__project=project).count()
    if format == "sft":
        return Prompt.objects.filter(project=project).count()
    if format == "kto":
        return Response.objects.filter(prompt__project=project).count()
    counts = counts or preference_counts(project=project, filters=filters)
    if format == "pairwise":
        return counts["max_pairs"]
    if filters.aggregation == "all":
        return counts["votes"] + counts["adjudicated"]
    return counts["comparisons"]

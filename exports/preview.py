"""What an export would hold before it is launched, and the exports made so far (the exports page).

- `export_preview(...)` reads the rows the export would write, through the same selector as the writers
  (`iter_preference_records` and the format's codec), and returns the first few and how many there are. It counts
  up to `count_limit` rows, so a preview of a huge project answers in about a second; beyond that it says "more
  than" and gives the upper bound `export_estimate` computes for progress bars.
- `exports_recent(...)`: the latest exports, newest first, with what their rows need.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

from django.db.models import QuerySet

from exports.filters import PreferenceFilters
from exports.formats import RECORD_CODECS
from exports.models import Export
from exports.selectors import export_estimate, iter_preference_records, preference_counts
from labeling.models import Project

PREVIEW_ROWS = 3
COUNT_LIMIT = 50_000  # rows counted exactly; ~1 s of reading on the machines of benchmarks/RESULTS.md


@dataclass(frozen=True)
class ExportPreview:
    rows: list[dict[str, Any]]  # the first rows, exactly as the file holds them
    row_count: int  # exact when `complete`, else the limit the count stopped at
    complete: bool
    upper_bound: int  # at most this many rows (export_estimate)
    counts: dict[str, int]  # preference_counts: comparisons, adjudicated, votes, annotators, max_pairs


def export_preview(
    *,
    project: Project,
    format: str,  # noqa: A002 - the name the export services use
    filters: PreferenceFilters,
    sample_size: int = PREVIEW_ROWS,
    count_limit: int = COUNT_LIMIT,
) -> ExportPreview:
    """The first `sample_size` rows of the export and its row count (exact up to `count_limit` rows)."""
    to_row = RECORD_CODECS[format].to_row
    records = iter_preference_records(project=project, filters=filters, format=format)
    rows = [to_row(record) for record in islice(records, sample_size)]
    counted = len(rows) + sum(1 for _ in islice(records, max(count_limit - len(rows), 0) + 1))
    complete = counted <= count_limit
    counts = preference_counts(project=project, filters=filters)
    return ExportPreview(
        rows=rows,
        row_count=counted if complete else count_limit,
        complete=complete,
        upper_bound=export_estimate(project=project, format=format, filters=filters, counts=counts),
        counts=counts,
    )


def exports_recent(*, limit: int = 50) -> QuerySet[Export]:
    return Export.objects.select_related("project", "created_by").order_by("-id")[:limit]

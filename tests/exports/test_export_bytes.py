"""Exported JSONL bytes, hashes and card statistics are exactly the definition's (`canonical_json_line` of each
row, `content_hash` of the rows) and do not depend on the chunk size: every format × aggregation × filter set, tricky
text (unicode, control characters, quotes), k-way ties, adjudications, flags, gold, chunks of 1 and 3."""

from __future__ import annotations

import hashlib

import pytest
from django.conf import settings

from exports import parallel as export_workers
from exports.filters import AGGREGATIONS, PreferenceFilters
from exports.formats import FORMATS, RECORD_CODECS
from exports.hashing import content_hash
from exports.json_text import assistant_turn, assistant_turn_json, canonical_json_line
from exports.loading import DEFAULT_CHUNK_SIZE
from exports.parallel import key_ranges, parallel_workers
from exports.selectors import iter_preference_lines, iter_preference_records, iter_preference_rows
from exports.stats import CardStats
from exports.writers import export_write
from labeling.models import Response
from labeling.services.projects import comparison_get_or_create

from .factories import adjudicate, make_comparison, make_project, make_user, vote

pytestmark = pytest.mark.django_db

TRICKY = [
    'quotes " and \\ backslash',
    "control \x01\x1f\x7f tab\t newline\n cr\r bell\x07 formfeed\x0c",
    # (no NUL: Postgres text cannot hold it)
    "unicode é ß 漢字 😀 \u2028\u2029 \ufeff zero\u200bwidth",
    "",
    "a" * 3000,
]


@pytest.fixture
def mixed_project(db):
    """Pairwise and 3-way items with tricky texts, ties, an adjudication, a flag, a gold item, 3 annotators; pairs
    that reuse a 3-way item's responses (a response's text is fetched once per chunk and shared)."""
    project = make_project("bytes", mode="ranking", k=3, overlap=3)
    users = [make_user(f"bytes{i}") for i in range(3)]
    admin = make_user("bytes-admin", role="admin")
    for index, text in enumerate(TRICKY):
        c3 = make_comparison(project, k=3, text=text or "empty")
        for rid, content in zip(
            c3.items.order_by("position").values_list("response_id", flat=True),
            [text, TRICKY[(index + 1) % len(TRICKY)], f"plain {index}"],
            strict=True,
        ):
            Response.objects.filter(pk=rid).update(content=content)
        vote(c3, users[0], [1, 2, 3])
        vote(c3, users[1], [1, 1, 2])  # a tie
        vote(c3, users[2], [3, 2, 1], flags=["unsafe"] if index == 1 else None)
        shared, _ = comparison_get_or_create(
            prompt=c3.prompt, responses=list(Response.objects.filter(prompt=c3.prompt).order_by("-pk")[:2])
        )
        vote(shared, users[index % 3], [1, 2])
        c2 = make_comparison(project, k=2, text=f"pair {index} {text[:20]}")
        vote(c2, users[index % 3], [2, 1])
        if index % 2:
            vote(c2, users[(index + 1) % 3], [2, 1])
        if index == 2:
            adjudicate(c2, admin, [1, 2])
    gold = make_comparison(project, k=2, is_gold=True)
    vote(gold, users[0], [1, 2])
    return project


def _reference(project, filters, fmt) -> tuple[bytes, str, dict]:
    """At the default chunk size: canonical_json_line of each row (the definition), `content_hash` of the rows, and
    the card statistics record by record."""
    rows = list(iter_preference_rows(project=project, filters=filters, format=fmt))
    data = "".join(canonical_json_line(row) + "\n" for row in rows).encode()
    stats = CardStats()
    meta = RECORD_CODECS[fmt].meta
    for record in iter_preference_records(project=project, filters=filters, format=fmt):
        stats.add(meta(record))
    return data, content_hash(rows), stats.as_dict()


@pytest.mark.parametrize("chunk_size", [1, 3, DEFAULT_CHUNK_SIZE])
def test_jsonl_export_is_byte_identical_for_every_format_and_aggregation(mixed_project, tmp_path, chunk_size):
    checked = 0
    for fmt in FORMATS:
        for aggregation in AGGREGATIONS:
            for extra in ({}, {"exclude_flagged": False, "min_agreement": 0.3}):
                filters = PreferenceFilters(aggregation=aggregation, **extra)
                expected, expected_hash, expected_stats = _reference(mixed_project, filters, fmt)
                assert expected_hash == hashlib.sha256(expected).hexdigest()
                lines = iter_preference_lines(
                    project=mixed_project, filters=filters, format=fmt, chunk_size=chunk_size
                )
                assert "".join(line + "\n" for line in lines).encode() == expected, (fmt, aggregation, extra)
                result = export_write(
                    project=mixed_project,
                    format=fmt,
                    file_type="jsonl",
                    dest=tmp_path / f"{fmt}-{aggregation}-{len(extra)}.jsonl",
                    filters=filters,
                    chunk_size=chunk_size,
                )
                assert result.path.read_bytes() == expected, (fmt, aggregation, extra)
                assert result.content_hash == expected_hash
                assert {k: v for k, v in result.stats.items() if k != "counts"} == expected_stats
                checked += bool(expected)
    assert checked == len(FORMATS) * len(AGGREGATIONS) * 2  # every combination has rows


def test_assistant_fragment_is_canonical_json():
    for text in TRICKY:
        assert assistant_turn_json(text) == canonical_json_line(assistant_turn(text))


# --- parallel exports (worker processes over key ranges of one Postgres snapshot) --------------------------------

postgres_only = pytest.mark.skipif(
    "postgresql" not in settings.DATABASES["default"]["ENGINE"],
    reason="parallel exports need Postgres snapshots",
)


def test_key_ranges_cover_the_span_once():
    for low, high, count in [(1, 1, 4), (5, 100, 7), (10, 13, 64), (1, 10**6, 32)]:
        ranges = key_ranges(low, high, count)
        assert ranges[0][0] == low and ranges[-1][1] == high
        assert len(ranges) == min(count, high - low + 1)
        assert all(a <= b for a, b in ranges)
        assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(len(ranges) - 1))


def test_exports_inside_a_transaction_stay_sequential():
    # The workers could not see this test's uncommitted rows; the export falls back to one process.
    assert parallel_workers(requested=4) == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_parallel_export_is_byte_identical_to_the_sequential_one(mixed_project, tmp_path):
    """Many one-or-two-id ranges (so prompts and groups span range boundaries), every format and aggregation:
    same bytes, hash and card statistics as one process."""
    assert parallel_workers(requested=3) == 3
    for index, fmt in enumerate(FORMATS):
        for aggregation in AGGREGATIONS:
            extra = {"exclude_flagged": False, "min_agreement": 0.3} if index % 2 else {}
            filters = PreferenceFilters(aggregation=aggregation, **extra)
            results = [
                export_write(
                    project=mixed_project,
                    format=fmt,
                    file_type="jsonl",
                    dest=tmp_path / f"{fmt}-{aggregation}-{workers}.jsonl",
                    filters=filters,
                    chunk_size=2,
                    workers=workers,
                )
                for workers in (1, 3)
            ]
            sequential, parallel = results
            assert sequential.rows > 0
            assert parallel.path.read_bytes() == sequential.path.read_bytes(), (fmt, aggregation)
            assert parallel.content_hash == sequential.content_hash
            assert parallel.stats == sequential.stats, (fmt, aggregation)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("README.md")) == sorted(
        f"{fmt}-{aggregation}-{workers}.jsonl"
        for fmt in FORMATS
        for aggregation in AGGREGATIONS
        for workers in (1, 3)
    )  # no range files or scratch folders left behind


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_failing_worker_fails_the_export_and_leaves_nothing(mixed_project, tmp_path, monkeypatch):
    parents_database = export_workers._worker_database
    monkeypatch.setattr(
        export_workers, "_worker_database", lambda: {**parents_database(), "NAME": "no_such_database"}
    )
    with pytest.raises(export_workers.ExportWorkerError, match="no_such_database"):
        export_write(
            project=mixed_project,
            format="pairwise",
            file_type="jsonl",
            dest=tmp_path / "out.jsonl",
            workers=2,
        )
    assert list(tmp_path.iterdir()) == []

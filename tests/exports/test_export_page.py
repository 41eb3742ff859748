"""The exports page through Django's test client: roles, preview and row count, launch, progress, history, downloads."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils.html import escape

from exports import preview as previews
from exports.filters import PreferenceFilters
from exports.models import Export
from exports.selectors import iter_preference_rows
from exports.services import export_create, export_run

from .factories import make_user

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def researcher(db):
    return make_user("page-res", role="researcher")


def _client(client, user):
    client.force_login(user)
    return client


def _finished(project, user, *, file_type: str = "jsonl", fmt: str = "pairwise", filters=None) -> Export:
    export = export_create(
        project=project, format=fmt, file_type=file_type, filters=filters, created_by=user, enqueue=False
    )
    return export_run(export_id=export.pk)


def _count(html: str) -> int:
    return int(re.search(r'data-testid="row-count" data-rows="(\d+)"', html).group(1))


def test_roles_researchers_and_admins_only(client, scenario, researcher):
    export = _finished(scenario["project"], researcher)
    urls = {
        "get": [
            reverse("exports:page"),
            reverse("exports:preview") + "?project=exp&format=pairwise",
            reverse("exports:row", args=[export.pk]),
            reverse("exports:download", args=[export.pk]),
            reverse("exports:card", args=[export.pk]),
        ],
        "post": [
            reverse("exports:page"),
            reverse("exports:cancel", args=[export.pk]),
            reverse("exports:retry", args=[export.pk]),
        ],
    }
    for method, paths in urls.items():
        for path in paths:
            response = getattr(client, method)(path)
            assert response.status_code == 302 and "/accounts/login/" in response["Location"], path
    annotator = _client(client, scenario["users"][0])
    for method, paths in urls.items():
        for path in paths:
            assert getattr(annotator, method)(path).status_code == 403, path
    assert "Exports" not in annotator.get("/").content.decode()
    assert (
        Export.objects.get(pk=export.pk).status == Export.Status.SUCCEEDED
    )  # the refused posts changed nothing
    for user in (researcher, scenario["admin"]):
        reader = _client(client, user)
        for path in urls["get"]:
            assert reader.get(path).status_code == 200, (user, path)
        home = reader.get("/").content.decode()
        assert f'href="{reverse("exports:page")}">Exports</a>' in home  # in the menu
    assert (
        f'href="{reverse("exports:page")}">Export datasets</a>'
        in _client(client, researcher).get("/").content.decode()
    )


@pytest.mark.parametrize(
    "query, filters",
    [
        ({}, PreferenceFilters()),
        ({"aggregation": "all"}, PreferenceFilters(aggregation="all")),
        ({"adjudicated_only": "on"}, PreferenceFilters(adjudicated_only=True)),
        ({"min_agreement": "0.5"}, PreferenceFilters(min_agreement=0.5)),
        ({"exclude_flagged": ""}, PreferenceFilters(exclude_flagged=False)),
        (
            {"gold_qualified_only": "on", "aggregation": "all"},
            PreferenceFilters(gold_qualified_only=True, aggregation="all"),
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["pairwise", "raw", "kto"])
def test_preview_counts_the_rows_the_filters_keep(client, scenario, researcher, query, filters, fmt):
    params = {
        "project": "exp",
        "format": fmt,
        "file_type": "jsonl",
        "aggregation": "majority",
        "exclude_flagged": "on",
    }
    params.update(query)
    params = {key: value for key, value in params.items() if value != ""}  # an unticked box is not sent
    response = _client(client, researcher).get(reverse("exports:preview"), params, **HX)
    assert response.status_code == 200
    html = response.content.decode()
    expected = list(iter_preference_rows(project=scenario["project"], filters=filters, format=fmt))
    assert _count(html) == len(expected), html
    assert filters.sentence() in html
    shown = html.count('data-testid="preview-row"')
    assert shown == min(len(expected), previews.PREVIEW_ROWS)
    for row in expected[:shown]:  # each row whole, as the file holds it (these texts are short)
        assert escape(json.dumps(row, indent=2, ensure_ascii=False)) in html


def test_preview_rows_and_limits(client, scenario, researcher, monkeypatch):
    reader = _client(client, researcher)
    base = {
        "project": "exp",
        "format": "pairwise",
        "file_type": "jsonl",
        "aggregation": "majority",
        "exclude_flagged": "on",
    }
    html = reader.get(reverse("exports:preview"), {**base, "aggregation": "all"}).content.decode()
    # c_major: 3 votes, c_tie: 2 opposite votes, c_adj: the adjudication replaces its 2 votes, c_flag left out.
    assert _count(html) == 6 and "more than" not in html
    assert "From 3 comparisons (1 adjudicated), 7 votes by 3 annotators." in html
    assert "Which is better, A or B?" in html  # the first row's prompt, as the file holds it
    # Counting stops at the limit on a big project and says so, with the upper bound.
    monkeypatch.setattr(previews, "COUNT_LIMIT", 2)
    html = reader.get(reverse("exports:preview"), {**base, "aggregation": "all"}).content.decode()
    assert "more than" in html and _count(html) == 2 and "at most 6;" in html
    # Nothing matches: said in words.
    html = reader.get(
        reverse("exports:preview"), {**base, "date_from": "2001-01-01", "date_to": "2001-01-02"}
    ).content.decode()
    assert _count(html) == 0 and 'data-testid="no-rows"' in html
    # Bad input: the field's message, no count.
    html = reader.get(
        reverse("exports:preview"), {**base, "date_from": "2024-02-02", "date_to": "2024-02-01"}
    ).content.decode()
    assert "The end date is before the start date." in html and "row-count" not in html
    html = reader.get(reverse("exports:preview"), {**base, "min_agreement": "1.5"}).content.decode()
    assert "Minimum agreement" in html and "row-count" not in html
    html = reader.get(reverse("exports:preview"), {"format": "pairwise"}).content.decode()
    assert "Choose a project" in html


def test_launch_creates_a_queued_export_job(client, scenario, researcher):
    reader = _client(client, researcher)
    page = reader.get(reverse("exports:page"))
    assert page.status_code == 200 and 'data-testid="no-exports"' in page.content.decode()
    form = {
        "project": "exp", "format": "ranking", "file_type": "parquet", "aggregation": "all",
        "min_agreement": "0.25", "date_from": "2020-01-01", "adjudicated_only": "on",
    }  # fmt: skip
    response = reader.post(reverse("exports:page"), form)
    export = Export.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('exports:page')}?project=exp#export-{export.pk}"
    assert (export.project, export.format, export.file_type, export.created_by) == (
        scenario["project"],
        "ranking",
        "parquet",
        researcher,
    )
    assert export.status == Export.Status.QUEUED
    assert (
        export.filters
        == PreferenceFilters(
            aggregation="all",
            min_agreement=0.25,
            date_from="2020-01-01",
            adjudicated_only=True,
            exclude_flagged=False,
        ).to_dict()
    )
    page = reader.get(response["Location"]).content.decode()
    assert f"Export #{export.pk} is queued" in page
    # While it is queued its entry polls for progress; it offers cancel.
    row = reader.get(reverse("exports:row", args=[export.pk]), **HX).content.decode()
    assert f'hx-get="{reverse("exports:row", args=[export.pk])}"' in row and 'hx-trigger="every 1s"' in row
    assert reverse("exports:cancel", args=[export.pk]) in row

    # Bad input: 422, the message beside the field, nothing created.
    bad = reader.post(reverse("exports:page"), {**form, "date_from": "2030-01-02", "date_to": "2030-01-01"})
    assert bad.status_code == 422 and "The end date is before the start date." in bad.content.decode()
    bad = reader.post(reverse("exports:page"), {**form, "format": "csv"})
    assert bad.status_code == 422 and Export.objects.count() == 1


def test_history_shows_hashes_and_downloads_the_file_with_its_card(client, scenario, researcher):
    done = _finished(scenario["project"], researcher, filters={"aggregation": "all"})
    failed = export_create(
        project=scenario["project"], format="sft", file_type="jsonl", created_by=researcher, enqueue=False
    )
    Export.objects.filter(pk=failed.pk).update(status=Export.Status.FAILED, error="OSError: disk full")
    reader = _client(client, researcher)
    page = reader.get(reverse("exports:page")).content.decode()
    assert done.content_hash and f'<code data-testid="export-hash">{done.content_hash}</code>' in page
    assert PreferenceFilters(aggregation="all").sentence() in page
    assert "OSError: disk full" in page and reverse("exports:retry", args=[failed.pk]) in page
    row = reader.get(reverse("exports:row", args=[done.pk])).content.decode()
    assert "hx-trigger" not in row  # finished: no more polling
    assert f'data-testid="export-rows">{done.rows}<' in row

    data = reader.get(reverse("exports:download", args=[done.pk]))
    assert data["Content-Disposition"] == f'attachment; filename="exp-pairwise-{done.pk}.jsonl"'
    body = b"".join(data.streaming_content)
    assert hashlib.sha256(body).hexdigest() == done.content_hash  # a JSONL file is its canonical lines
    card = reader.get(reverse("exports:card", args=[done.pk]))
    assert card["Content-Disposition"] == f'attachment; filename="exp-pairwise-{done.pk}.jsonl.README.md"'
    text = b"".join(card.streaming_content).decode()
    assert done.content_hash in text and f"| rows | {done.rows} |" in text

    # An unfinished export has nothing to download.
    assert reader.get(reverse("exports:download", args=[failed.pk])).status_code == 404


def test_hf_download_unpacks_to_a_folder_load_from_disk_opens(client, scenario, researcher, tmp_path):
    import datasets

    export = _finished(scenario["project"], researcher, file_type="hf", fmt="raw")
    reader = _client(client, researcher)
    row = reader.get(reverse("exports:row", args=[export.pk])).content.decode()
    assert f'datasets.load_from_disk("exp-raw-{export.pk}")' in row and "exports:card" not in row
    response = reader.get(reverse("exports:download", args=[export.pk]))
    assert response["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content))) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    folder = tmp_path / "unpacked" / f"exp-raw-{export.pk}"
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == [folder.name]
    dataset = datasets.load_from_disk(str(folder))
    assert (
        len(dataset)
        == export.rows
        == len(list(iter_preference_rows(project=scenario["project"], format="raw")))
    )
    card = (folder / "README.md").read_text()
    assert (
        export.content_hash in card
    )  # the card inside the folder, as `export_preferences --out DIR` writes it
    assert Path(folder / "dataset_info.json").is_file()


def test_cancel_and_retry_from_the_page(client, scenario, researcher):
    export = export_create(
        project=scenario["project"],
        format="pairwise",
        file_type="jsonl",
        created_by=researcher,
        enqueue=False,
    )
    reader = _client(client, researcher)
    row = reader.post(reverse("exports:cancel", args=[export.pk]), **HX).content.decode()
    export.refresh_from_db()
    assert export.status == Export.Status.CANCELLED
    assert f'data-status="{Export.Status.CANCELLED}"' in row and "hx-trigger" not in row
    assert (
        reverse("exports:retry", args=[export.pk]) in row
        and reverse("exports:cancel", args=[export.pk]) not in row
    )
    row = reader.post(reverse("exports:retry", args=[export.pk]), **HX).content.decode()
    export.refresh_from_db()
    assert export.status == Export.Status.QUEUED and 'hx-trigger="every 1s"' in row
    # A finished export cannot be cancelled: the service's message, the status unchanged.
    export_run(export_id=export.pk)
    row = reader.post(reverse("exports:cancel", args=[export.pk]), **HX).content.decode()
    export.refresh_from_db()
    assert (
        export.status == Export.Status.SUCCEEDED and "Only a queued or running export can be cancelled" in row
    )
    # Without htmx: back to the page, with the message.
    response = reader.post(reverse("exports:retry", args=[export.pk]))
    assert response.status_code == 302
    assert (
        "Only a failed, cancelled or queued export can be retried"
        in reader.get(response["Location"]).content.decode()
    )

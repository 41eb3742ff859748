"""A researcher exports from the web in Chromium: the menu, a preview count, launch, a real Celery worker writes the
export while the page polls, then both downloads: a Hugging Face dataset that `datasets.load_from_disk` opens after
unpacking, and a JSONL file whose sha256 is the hash the page shows, with its dataset card."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile

import pytest
from django.conf import settings as django_settings

from exports.filters import PreferenceFilters
from exports.models import Export
from exports.selectors import iter_preference_rows
from tests.browser import CHROMIUM, chromium_page, log_in
from tests.workers import celery_worker

from .factories import make_user

pytestmark = [
    pytest.mark.browser,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def export_worker():
    url = os.environ.get("REDIS_TEST_URL")
    if not url:
        pytest.skip("REDIS_TEST_URL is not set; `make test` starts Redis and sets it")
    env = {"ARTIFACT_ROOT": str(django_settings.ARTIFACT_ROOT)}
    with celery_worker(broker_url=url, queues="default", extra_env=env) as worker:
        yield worker


def _launch_and_wait(page, *, file_type: str) -> tuple[str, str]:
    """Launch the export the form describes with `file_type`; wait for the worker; (export id, hash shown)."""
    page.select_option("#id_file_type", file_type)
    with page.expect_navigation():
        page.click('#export-form button[type="submit"]')
    page.wait_for_selector(".messages >> text=is queued")
    entry = page.locator('li[data-testid="export"]').first
    export_id = entry.get_attribute("data-export")
    page.wait_for_selector(
        f'#export-{export_id}[data-status="{Export.Status.SUCCEEDED}"]', timeout=90_000
    )  # htmx polls the entry
    return export_id, page.locator(f'#export-{export_id} [data-testid="export-hash"]').inner_text()


def test_researcher_exports_from_the_menu_and_downloads(live_server, scenario, export_worker, tmp_path):
    filters = PreferenceFilters(aggregation="all")
    expected = len(
        list(iter_preference_rows(project=scenario["project"], filters=filters, format="pairwise"))
    )
    assert expected > 0
    make_user("res-web", role="researcher")
    problems: list[str] = []

    with chromium_page() as page:
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))  # CSP too
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        log_in(page, live_server.url, username="res-web", password="pw-for-tests-123", next_url="/")
        page.click('header nav >> text="Exports"')
        page.wait_for_selector("#export-form")
        page.wait_for_function("() => document.readyState === 'complete' && window.htmx !== undefined")
        page.select_option("#id_project", "exp")
        page.select_option("#id_format", "pairwise")
        page.select_option("#id_aggregation", "all")
        count = page.wait_for_selector(f'[data-testid="row-count"][data-rows="{expected}"]')
        assert count.inner_text() == str(expected)
        assert filters.sentence() in page.locator('[data-testid="filters-sentence"]').inner_text()
        assert page.locator('[data-testid="preview-row"]').count() == min(expected, 3)

        hf_id, hf_hash = _launch_and_wait(page, file_type="hf")
        assert len(hf_hash) == 64
        with page.expect_download() as download:
            page.click(f'#export-{hf_id} [data-testid="download"]')
        archive = tmp_path / download.value.suggested_filename
        download.value.save_as(archive)

        # The form came back with the project; the filters are chosen again for the second export.
        page.wait_for_selector('[data-testid="row-count"]')
        page.select_option("#id_aggregation", "all")
        page.wait_for_selector(f'[data-testid="row-count"][data-rows="{expected}"]')
        jsonl_id, jsonl_hash = _launch_and_wait(page, file_type="jsonl")
        with page.expect_download() as data_download:
            page.click(f'#export-{jsonl_id} [data-testid="download"]')
        data_file = tmp_path / data_download.value.suggested_filename
        data_download.value.save_as(data_file)
        with page.expect_download() as card_download:
            page.click(f'#export-{jsonl_id} [data-testid="download-card"]')
        card_file = tmp_path / card_download.value.suggested_filename
        card_download.value.save_as(card_file)
        # Both entries stay in the history with their hashes.
        history = page.locator('[data-testid="export-history"]').inner_text()
        assert hf_hash in history and jsonl_hash in history

    assert problems == [], problems
    import datasets

    assert archive.name == f"exp-pairwise-{hf_id}.tar"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    folder = tmp_path / "unpacked" / f"exp-pairwise-{hf_id}"
    dataset = datasets.load_from_disk(str(folder))
    assert len(dataset) == expected and dataset[0]["chosen"][0]["role"] == "assistant"
    assert hf_hash in (folder / "README.md").read_text()

    assert (
        data_file.name == f"exp-pairwise-{jsonl_id}.jsonl" and card_file.name == f"{data_file.name}.README.md"
    )
    assert (
        hashlib.sha256(data_file.read_bytes()).hexdigest() == jsonl_hash
    )  # JSONL: the rows' canonical lines
    assert len(data_file.read_text().splitlines()) == expected
    assert jsonl_hash in card_file.read_text()
    # The hash the page showed is the hash of the same rows, whatever the file type.
    exports = {str(export.pk): export for export in Export.objects.all()}
    assert exports[hf_id].status == exports[jsonl_id].status == Export.Status.SUCCEEDED
    assert exports[hf_id].content_hash == hf_hash == jsonl_hash
    assert exports[hf_id].filters == exports[jsonl_id].filters == filters.to_dict()

"""The launch form in Chromium: the estimate appears as the form changes; a bad launch shows its error beside the
field that caused it, in words, and in a summary at the top that takes the focus and links to the field."""

from __future__ import annotations

import shutil

import pytest

from registry.models import ModelVersion
from tests.browser import CHROMIUM, chromium_page, log_in
from tests.training.factories import make_user, ranked_project
from training.models import TrainingRun

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]

EXPECTED = "PPO mini-batch size (8) cannot be larger than the batch size (4)"


def test_bad_launch_shows_the_error_beside_its_field_and_in_the_summary(live_server, enqueued_stages):
    project = ranked_project(slug="launchy", prompts=4)
    ModelVersion.objects.create(
        name="launch-base",
        kind="policy",
        artifact_path="models/l",
        sha256="0" * 64,
        num_parameters=135_000_000,
    )
    make_user("launcher", "admin")

    with chromium_page() as page:
        log_in(
            page, live_server.url, username="launcher", password="pw-for-tests-123",
            next_url=f"/training/launch/?project={project.slug}",
        )  # fmt: skip
        page.wait_for_function("() => document.readyState === 'complete' && window.htmx !== undefined")
        page.select_option("#id_preset", "rlhf")
        page.wait_for_selector('[data-testid="launch-estimate"] >> text=About')
        estimate = page.locator("#launch-estimate").inner_text()
        assert "SFT: about" in estimate and "PPO: about" in estimate and "CPU" in estimate, estimate
        assert page.locator("#id_size").input_value() == "cpu_demo"  # no GPU worker: sized for a CPU

        page.fill("#id_batch_size", "4")
        page.fill("#id_advanced", '{"ppo": {"mini_batch_size": 8}}')
        page.click("#launch-form button[type=submit]")

        summary = page.wait_for_selector('[data-testid="error-summary"]')
        assert "1 problem stops this launch" in summary.inner_text()
        assert EXPECTED in summary.inner_text()
        assert page.evaluate("document.activeElement.id") == "error-summary"
        beside = page.locator("#field-batch_size .errorlist").inner_text()
        assert EXPECTED in beside
        assert page.locator("#field-advanced .errorlist").count() == 0
        assert "__all__" not in page.content() and "mini_batch_size" not in summary.inner_text()
        # The typed values survive, and the summary's link leads to the field.
        assert page.locator("#id_batch_size").input_value() == "4"
        page.click('#error-summary a[href="#field-batch_size"]')
        assert page.evaluate("location.hash") == "#field-batch_size"

    assert TrainingRun.objects.count() == 0 and enqueued_stages == []

"""The run page in Chromium: human numbers on the charts, the metrics toggle survives the refresh, logs wrap."""

from __future__ import annotations

import shutil

import pytest

from registry.models import ModelVersion
from tests.browser import CHROMIUM, chromium_page, log_in
from tests.training.factories import TINY_STAGE_CONFIGS, make_user, ranked_project
from training.models import StageRun
from training.services import runs as run_services

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]


def test_run_page_numbers_toggle_and_log_in_chromium(live_server, enqueued_stages):
    project = ranked_project(slug="watch", prompts=4)
    base = ModelVersion.objects.create(
        name="watch-base", kind="policy", artifact_path="models/w", sha256="0" * 64
    )
    run = run_services.training_run_launch(
        project=project, preset="sft", base_model=base, stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]}
    )
    stage = run.stages.get()
    points = [
        {
            "step": step,
            "values": {"loss": 4e-5 / step, "learning_rate": 2e-5 * (1 - step / 10), "grad_norm": 1.0 / step},
        }
        for step in range(1, 6)
    ]
    StageRun.objects.filter(pk=stage.pk).update(
        status="running", step=5, total_steps=10, metrics=points, log_tail="step " + "x" * 3000
    )
    run.status = "running"
    run.save(update_fields=["status"])
    make_user("watcher", "admin")

    with chromium_page() as page:
        log_in(
            page, live_server.url, username="watcher", password="pw-for-tests-123",
            next_url=f"/training/runs/{run.pk}/", width=1200,
        )  # fmt: skip
        page.wait_for_selector(f'.charts[data-series-id="curves-{stage.pk}"] figure canvas')
        labels = page.evaluate(
            """() => [...document.querySelectorAll('#run-live figure canvas')].map(canvas => {
                 const chart = Chart.getChart(canvas);
                 return chart.scales.y.ticks.map(tick => tick.label);
               })"""
        )
        flat = [label for chart in labels for label in chart]
        assert flat and not any("E" in label or "0000" in label for label in flat), flat
        assert any(label.endswith("e-5") for label in flat), flat
        assert (
            page.locator(f'.charts[data-series-id="more-series-{stage.pk}"] figure').count() == 0
        )  # behind the toggle

        page.click(f"#more-{stage.pk} > summary")
        page.wait_for_selector(f'.charts[data-series-id="more-series-{stage.pk}"] figure canvas')
        # The 2 s refresh swaps the whole live section: what the reader opened stays open and drawn.
        page.evaluate("() => { window.__before = document.getElementById('run-live'); }")
        page.wait_for_function(
            "() => document.getElementById('run-live') !== window.__before", timeout=10_000
        )
        page.wait_for_timeout(300)
        assert page.locator(f"#more-{stage.pk}").evaluate("details => details.open")
        assert page.locator(f'.charts[data-series-id="more-series-{stage.pk}"] figure').count() == 2
        more_labels = page.evaluate(
            f"""() => [...document.querySelectorAll('.charts[data-series-id="more-series-{stage.pk}"] canvas')]
                   .flatMap(canvas => Chart.getChart(canvas).scales.y.ticks.map(tick => tick.label))"""
        )
        assert not any("E" in label for label in more_labels), more_labels

        log = page.locator(f"#log-{stage.pk} pre.log")
        assert log.evaluate("pre => getComputedStyle(pre).whiteSpace") == "pre-wrap"
        assert log.evaluate("pre => pre.scrollWidth <= pre.clientWidth + 1")

"""Progress of `--wait` commands and exports: plain lines when captured, a bar on a terminal, 100% at the end."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from core.progress import ProgressLine
from exports.selectors import iter_preference_rows
from loop.management.commands import sample as sample_command
from loop.models import SamplingJob
from registry.models import ModelVersion
from tests.exports.factories import make_comparison, make_project, make_user, vote

pytestmark = pytest.mark.django_db


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_captured_output_gets_one_plain_line_per_change_and_a_terminal_gets_a_bar():
    captured = io.StringIO()
    line = ProgressLine(captured, desc="job #1")
    for done, status in [(0, "queued"), (0, "queued"), (1, "running"), (1, "running"), (3, "succeeded")]:
        line.show(done, 3, status)
    line.close()
    assert captured.getvalue().splitlines() == [
        "job #1: 0/3 (0%) queued",
        "job #1: 1/3 (33%) running",
        "job #1: 3/3 (100%) succeeded",
    ]
    assert "\r" not in captured.getvalue()

    terminal = _Terminal()
    bar = ProgressLine(terminal, desc="job #2")
    bar.show(1, 4, "running")
    bar.close()
    assert "\r" in terminal.getvalue() and "1/4" in terminal.getvalue()


def test_sample_wait_prints_progress_lines_not_a_redrawn_bar(monkeypatch):
    project = make_project("cli-sample")
    make_comparison(project)
    version = ModelVersion.objects.create(
        name="cli-policy", kind="policy", artifact_path="models/cli-policy", sha256="0" * 64
    )
    # The worker's side, one step per poll (the test has no worker): it runs, then sits, then finishes.
    steps = iter(
        [(0, 2, "running"), (1, 2, "running"), (1, 2, "running"), (1, 2, "running"), (2, 2, "succeeded")]
    )

    def worker_moves_on(_seconds):
        done, total, status = next(steps)
        SamplingJob.objects.filter(model_version=version).update(done=done, total=total, status=status)

    monkeypatch.setattr(sample_command.time, "sleep", worker_moves_on)
    out = io.StringIO()
    call_command(
        "sample", "--model-version", str(version.pk), "--project", project.slug, "--wait", stdout=out
    )
    lines = out.getvalue().splitlines()
    job = SamplingJob.objects.get(model_version=version)
    assert lines == [
        f"sampling job #{job.pk}: 0/1 (0%) queued",
        f"sampling job #{job.pk}: 0/2 (0%) running",
        f"sampling job #{job.pk}: 1/2 (50%) running",
        f"sampling job #{job.pk}: 2/2 (100%) succeeded",
        f"Sampling job #{job.pk} succeeded: 0 responses, 0 new comparisons",
    ]


def test_export_progress_bar_ends_at_100_percent_when_filters_drop_rows(tmp_path):
    project = make_project("cli-export", mode="ranking", k=3, overlap=2)
    first, second = make_user("cli1"), make_user("cli2")
    for _ in range(3):
        comparison = make_comparison(project, k=3)
        vote(comparison, first, [1, 2, 3])
        vote(comparison, second, [1, 3, 2])  # the 2-vs-3 pair has no majority: fewer rows than the estimate
    rows = len(list(iter_preference_rows(project=project, format="pairwise")))
    err = io.StringIO()
    call_command(
        "export_preferences", "--project", project.slug, "--format", "pairwise",
        "--out", str(tmp_path / "pairs.jsonl"), stderr=err, stdout=io.StringIO(),
    )  # fmt: skip
    last_frame = err.getvalue().split("\r")[-1]
    assert "100%" in last_frame and f"{rows}/{rows}" in last_frame, err.getvalue()

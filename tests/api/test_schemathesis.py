"""Schemathesis against the live test server, once per role: no 5xx and every response as the schema says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.services import api_token_get_or_create
from exports import services as export_services
from loop.services import sampling
from registry import services as registry_services
from tests.labeling.factories import make_comparison, make_project, make_user
from training.services import runs

ST = shutil.which("st", path=str(Path(sys.executable).parent))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture
def _no_task_queue(monkeypatch):
    """Exports, training runs, sampling jobs and base model imports created by the fuzzer are recorded, not queued for the suite's
    shared broker."""
    queued: list = []
    monkeypatch.setattr(export_services, "export_enqueue", lambda **kwargs: queued.append(kwargs))
    monkeypatch.setattr(runs, "stage_enqueue", lambda **kwargs: queued.append(kwargs))
    monkeypatch.setattr(sampling, "sampling_job_enqueue", lambda **kwargs: queued.append(kwargs))
    monkeypatch.setattr(
        registry_services, "base_model_import_job_enqueue", lambda **kwargs: queued.append(kwargs)
    )
    return queued


# Admins reach every operation: they also get the coverage phase (every boundary and invalid value the schema
# implies, NUL and lone surrogates included; about 2 minutes on 2 cores). The other roles are fuzzed, which is
# where their permission paths differ.
PHASES = {
    "admin": "examples,coverage,fuzzing",
    "annotator": "examples,fuzzing",
    "researcher": "examples,fuzzing",
}
# Wrong HTTP methods (405s) are not what this test is about; skipping them halves the coverage phase.
CONFIG = "[phases.coverage]\nunexpected-methods = []\n"


@pytest.mark.slow
@pytest.mark.parametrize("role", list(PHASES))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    role, live_server, transactional_db, tmp_path, _no_task_queue
):
    project = make_project("fuzz", gold_ratio=0.5)
    for i in range(3):
        make_comparison(project, is_gold=i == 0)
    user = make_user(f"fuzz-{role}", role=role)
    token = api_token_get_or_create(user=user).key
    report = tmp_path / "report.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [
            ST,
            "--config-file",
            str(config),
            "run",
            f"{live_server.url}/api/schema/?format=json",
            "--header",
            f"Authorization: Token {token}",
            "--checks",
            CHECKS,
            "--phases",
            PHASES[role],
            "--max-examples",
            "15",
            "--seed",
            "12",
            "--workers",
            "1",
            "--no-shrink",
            "--request-timeout",
            "30",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated.group(1)) > 50, result.stdout[-4000:]  # it really ran
    assert json.loads(report.read_text())

"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core import token_cache
from training import jobs as training_jobs
from training.engine.base_model import build_tiny_model, save_model_atomically
from training.models import TrainingRun
from training.services import runs as run_services
from training.services.execution import stage_run_execute


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised model with SmolLM2's architecture and tokenizer, saved once per test session."""
    model, tokenizer = build_tiny_model(seed=0)
    return save_model_atomically(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny").path


@pytest.fixture(autouse=True)
def _isolated_artifact_root(settings, tmp_path) -> None:
    """Every test writes artifacts into its own folder, never into var/."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Users are created in almost every test; the production hasher costs about a second each on 2 cores."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _forget_api_tokens():
    """A test's rolled-back transaction fires no signal: tokens it made must not be remembered into the next test."""
    yield
    token_cache.forget_all()


@pytest.fixture(autouse=True)
def _isolated_cache(settings) -> str:
    """Every test counts throttles and sign-in failures under its own cache prefix (Redis outlives a test)."""
    prefix = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {name: {**cache, "KEY_PREFIX": prefix} for name, cache in settings.CACHES.items()}
    return prefix


@pytest.fixture
def enqueued_stages(monkeypatch) -> list[int]:
    """Training stages run in the test's own process: the ids of the stages training.jobs would have sent to the
    gpu queue. It sends after the commit, which a test's transaction never reaches: run the call that commits inside
    `django_capture_on_commit_callbacks(execute=True)`."""
    sent: list[int] = []
    monkeypatch.setattr(training_jobs, "job_send", lambda *, kind, pk, quiet=False: sent.append(pk))
    return sent


@pytest.fixture
def launch(enqueued_stages, django_capture_on_commit_callbacks):
    """`training_run_launch`, committed as a request would commit it: its first stage is sent (enqueued_stages)."""

    def launch(**options) -> TrainingRun:
        with django_capture_on_commit_callbacks(execute=True):
            return run_services.training_run_launch(**options)

    return launch


@pytest.fixture
def drain_stages(enqueued_stages, django_capture_on_commit_callbacks):
    """Run every sent stage here, to its end, committing as a worker does: a stage that succeeds sends the next."""

    def drain(*, worker: str = "test") -> None:
        while enqueued_stages:
            with django_capture_on_commit_callbacks(execute=True):
                stage_run_execute(stage_run_id=enqueued_stages.pop(0), worker=worker, task_id="local")

    return drain

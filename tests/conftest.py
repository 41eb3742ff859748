"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised model with SmolLM2's architecture and tokenizer, saved once per test session."""
    from training.engine.base_model import build_tiny_model, save_model_atomically

    model, tokenizer = build_tiny_model(seed=0)
    return save_model_atomically(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny").path


@pytest.fixture(autouse=True)
def _isolated_artifact_root(settings, tmp_path) -> None:
    """Every test writes artifacts into its own folder, never into var/."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"


@pytest.fixture(autouse=True)
def _isolated_cache(settings) -> str:
    """Every test counts throttles and sign-in failures under its own cache prefix (Redis outlives a test)."""
    import uuid

    prefix = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {name: {**cache, "KEY_PREFIX": prefix} for name, cache in settings.CACHES.items()}
    return prefix


@pytest.fixture
def enqueued_stages(monkeypatch) -> list[int]:
    """Training stages run in the test's own process: collect the stage ids that would have gone to the gpu queue.

    On-commit hooks run at once, as a real commit would run them (the test's transaction never commits).
    """
    from django.db import transaction

    from training.services import runs as run_services

    sent: list[int] = []
    monkeypatch.setattr(
        run_services, "stage_enqueue", lambda *, stage_run, quiet=False: sent.append(stage_run.pk)
    )
    monkeypatch.setattr(transaction, "on_commit", lambda callback, using=None, robust=False: callback())
    return sent

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

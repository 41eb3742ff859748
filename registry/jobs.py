"""Base model imports as jobs of the shared enqueue path (core.jobs), on the `default` queue."""

from __future__ import annotations

from core.jobs import JobKind, job_kind_register
from registry.models import BaseModelImport

BASE_MODEL_IMPORT_TASK = "registry.base_model_import"  # registry.tasks.base_model_import_task


BASE_MODEL_IMPORT_JOB = job_kind_register(
    JobKind(
        name="base model import",
        model=BaseModelImport,
        task=BASE_MODEL_IMPORT_TASK,
        queue="default",
    )
)

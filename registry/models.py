from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import QueuedJob


class ModelVersion(models.Model):
    """One entry of the model registry: an immutable artifact on disk under ARTIFACT_ROOT, with its lineage.

    The bundled base model is the first row. Training stages register their outputs with `parent` set to the
    model they started from and `base` to the root of that lineage; the stage that produced a version points at
    it (`StageRun.output_model`, reverse `produced_by_stage`).
    """

    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"
        ADAPTER = "adapter", "Adapter"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POLICY)
    base = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="derived")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    artifact_path = models.CharField(max_length=500, help_text="Relative to ARTIFACT_ROOT.")
    sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=300, blank=True, help_text="Where the weights came from.")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    num_parameters = models.BigIntegerField(default=0)
    facts = models.JSONField(
        default=dict,
        blank=True,
        help_text="Imported base models: architecture, dtype, context length, license, chat template and pad token.",
    )
    dataset_hash = models.CharField(max_length=64, blank=True, help_text="Content hash of the training data.")
    use_for_sampling = models.BooleanField(
        default=False, help_text="The policy whose responses feed the annotators (one at a time)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "training_modelversion"  # the table it had in the training app: existing rows stay
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["use_for_sampling"],
                condition=models.Q(use_for_sampling=True),
                name="one_sampling_policy",
            ),
            models.CheckConstraint(
                condition=models.Q(use_for_sampling=False) | models.Q(kind="policy"),
                name="sampling_model_is_policy",
            ),
            models.CheckConstraint(
                condition=models.Q(sha256__regex=r"^[0-9a-f]{64}$"), name="modelversion_sha256_hex"
            ),
            models.CheckConstraint(
                condition=~models.Q(artifact_path=""), name="modelversion_artifact_path_set"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name} ({self.kind})"


class BaseModelImport(QueuedJob):
    """An admin's "Add a base model": a folder on the shared artifact volume, checked and copied into the registry
    by a Celery task on the `default` queue (`registry.services.base_model_import_folder`, as the command does)."""

    source_path = models.CharField(
        max_length=1000, help_text="The model folder, resolved, inside one of MODEL_IMPORT_ROOTS."
    )
    name = models.CharField(max_length=200, blank=True, help_text="Registry name; empty: the folder's name.")
    chat_template = models.TextField(
        blank=True, help_text="A Jinja chat template for a tokenizer without one."
    )
    bytes_total = models.BigIntegerField(default=0, help_text="Size of the weights to copy.")
    bytes_copied = models.BigIntegerField(default=0)
    progress = models.FloatField(default=0.0, help_text="0–1: the share of the weights copied.")
    model_version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="import_job"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="base_model_imports",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="basemodelimport_progress_range"
            ),
            models.CheckConstraint(
                condition=~Q(status="succeeded") | Q(model_version__isnull=False),
                name="basemodelimport_succeeded_has_model",
            ),
        ]

    def __str__(self) -> str:
        return f"base model import #{self.pk} {self.source_path} ({self.status})"

    @property
    def percent(self) -> int:
        return int(100 * self.progress)

"""The export domain's one model: a preference dataset written by a background job."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import QueuedJob


class Export(QueuedJob):
    """A preference dataset written under ARTIFACT_ROOT/exports/ by a Celery task, with its progress."""

    class Format(models.TextChoices):
        PAIRWISE = "pairwise", "Pairwise preferences (prompt / chosen / rejected)"
        RANKING = "ranking", "k-way rankings with ties"
        SFT = "sft", "Best responses as chat messages (SFT)"
        KTO = "kto", "Unpaired prompt / completion / label (KTO)"
        RAW = "raw", "Every ranking, pseudonymised"

    class FileType(models.TextChoices):
        JSONL = "jsonl", "JSON Lines"
        PARQUET = "parquet", "Parquet"
        HF = "hf", "Hugging Face datasets directory (save_to_disk)"

    project = models.ForeignKey("labeling.Project", on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=16, choices=Format.choices, default=Format.PAIRWISE)
    file_type = models.CharField(max_length=16, choices=FileType.choices, default=FileType.JSONL)
    filters = models.JSONField(default=dict, blank=True, help_text="PreferenceFilters.to_dict().")
    rows = models.BigIntegerField(default=0)
    progress = models.FloatField(default=0.0, help_text="0–1, an estimate until the export has finished.")
    path = models.CharField(max_length=500, blank=True, help_text="Relative to ARTIFACT_ROOT.")
    size_bytes = models.BigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True)
    stats = models.JSONField(default=dict, blank=True, help_text="What the dataset card says.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="exports"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "labeling_export"  # moved here from the labeling app with its rows (exports 0001)
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="export_progress_range"
            ),
            models.CheckConstraint(
                condition=~Q(status="succeeded") | ~Q(path=""), name="export_succeeded_has_path"
            ),
        ]

    def __str__(self) -> str:
        return f"export #{self.pk} {self.project_id} {self.format}.{self.file_type} ({self.status})"

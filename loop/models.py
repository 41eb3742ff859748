from django.conf import settings
from django.db import models

from core.models import QueuedJob


class SamplingJob(QueuedJob):
    """A policy generating responses for a prompt pool, then (optionally) new comparisons for annotators."""

    class Pool(models.TextChoices):
        NEW = "new", "Prompts this model has not answered yet"
        ALL = "all", "All prompts"
        HELD_OUT = "held_out", "Held-out prompts (metadata held_out = true)"

    project = models.ForeignKey("labeling.Project", on_delete=models.CASCADE, related_name="sampling_jobs")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="sampling_jobs"
    )
    reward_model = models.ForeignKey(
        "registry.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Scores candidate pairs for active selection; the newest reward model when empty.",
    )
    pool = models.CharField(max_length=16, choices=Pool.choices, default=Pool.NEW)
    limit = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many prompts.")
    params = models.JSONField(
        default=dict, blank=True, help_text="Generation parameters, recorded on each response."
    )
    make_comparisons = models.BooleanField(default=True)
    uncertain_share = models.FloatField(
        default=0.5,
        help_text="Share of new comparisons pushed to the front of the queue (most uncertain first).",
    )
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    responses_created = models.PositiveIntegerField(default=0)
    comparisons_created = models.PositiveIntegerField(default=0)
    device = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(uncertain_share__gte=0) & models.Q(uncertain_share__lte=1),
                name="samplingjob_uncertain_share_range",
            ),
            models.CheckConstraint(
                condition=models.Q(done__lte=models.F("total")), name="samplingjob_done_le_total"
            ),
        ]

    def __str__(self) -> str:
        return f"sampling job #{self.pk} ({self.status})"

"""Labeling domain: projects, prompts, responses, comparisons, leased assignments, rankings, adjudications,
import jobs.

Every invariant that the database can hold is a constraint here (the services validate first and give a clear
message; the constraints make sure nothing slips past them, e.g. under concurrency):

- a project's default k is 2 for pairwise and 3–8 for ranking; overlap ≥ 1; lease ≥ 10 s; 0 ≤ gold ratio ≤ 1;
- external ids are unique per project (prompts, comparisons) or per prompt (responses) and never blank for
  prompts and responses (imports derive one from the content when the file has none): imports are idempotent;
- a comparison holds 2–8 responses, each once, at distinct positions; the same set of responses is compared once;
  a gold comparison has an expected ranking;
- one assignment and one ranking per (comparison, annotator); a ranking belongs to its assignment.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import Job

MIN_K = 2
MAX_K = 8


class Project(models.Model):
    class Mode(models.TextChoices):
        PAIRWISE = "pairwise", "Pairwise (A vs B)"
        RANKING = "ranking", "Ranking (k-way)"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to annotators with the ? key.")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.PAIRWISE)
    k = models.PositiveSmallIntegerField(default=2, help_text="Responses per comparison when building them.")
    allow_ties = models.BooleanField(default=True)
    overlap = models.PositiveSmallIntegerField(default=3, help_text="Distinct annotators per comparison.")
    lease_seconds = models.PositiveIntegerField(default=600)
    gold_ratio = models.FloatField(default=0.1, help_text="Share of an annotator's items that are gold.")
    trust_threshold = models.FloatField(
        default=0.6, help_text="Trust score from which an annotator is qualified."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(mode="pairwise") & Q(k=2)) | (Q(mode="ranking") & Q(k__gte=3) & Q(k__lte=MAX_K)),
                name="project_k_matches_mode",
            ),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=10), name="project_lease_min"),
            models.CheckConstraint(
                condition=Q(gold_ratio__gte=0) & Q(gold_ratio__lte=1), name="project_gold_ratio"
            ),
            models.CheckConstraint(
                condition=Q(trust_threshold__gte=0) & Q(trust_threshold__lte=1),
                name="project_trust_threshold",
            ),
        ]

    def __str__(self) -> str:
        return self.slug


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    external_id = models.CharField(max_length=200)
    messages = models.JSONField(
        help_text='[{"role": "user"|"assistant"|"system", "content": "..."}], last is user.'
    )
    domain = models.CharField(max_length=100, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "external_id"], name="prompt_external_id_unique"),
            models.CheckConstraint(condition=~Q(external_id=""), name="prompt_external_id_set"),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.external_id}"

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages or []):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""


class Response(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    external_id = models.CharField(max_length=200)
    content = models.TextField()
    model_version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="responses"
    )
    source_name = models.CharField(
        max_length=200, blank=True, help_text="External source when not a ModelVersion."
    )
    generation_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "external_id"], name="response_external_id_unique"),
            models.CheckConstraint(condition=~Q(external_id=""), name="response_external_id_set"),
            models.CheckConstraint(
                condition=Q(model_version__isnull=False) | ~Q(source_name=""), name="response_has_source"
            ),
        ]

    def __str__(self) -> str:
        return f"response #{self.pk} ({self.source})"

    @property
    def source(self) -> str:
        return self.model_version.name if self.model_version_id else self.source_name


class Comparison(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="comparisons")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    external_id = models.CharField(max_length=200, blank=True)
    responses = models.ManyToManyField(Response, through="ComparisonResponse", related_name="comparisons")
    k = models.PositiveSmallIntegerField()
    # Sorted response ids joined by "-": the same set of responses is compared once per project.
    response_key = models.CharField(max_length=200)
    priority = models.FloatField(default=0.0, help_text="Higher is served first (active selection).")
    is_gold = models.BooleanField(default=False)
    # Response id (as a string) -> rank, 1 is best, equal ranks are ties. Set for gold comparisons.
    expected_ranks = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["project", "status", "is_gold", "-priority", "id"], name="comparison_queue_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(k__gte=MIN_K) & Q(k__lte=MAX_K), name="comparison_k_range"),
            models.CheckConstraint(
                condition=Q(is_gold=False) | Q(expected_ranks__isnull=False),
                name="comparison_gold_has_expected",
            ),
            models.UniqueConstraint(
                fields=["project", "response_key"], name="comparison_response_set_unique"
            ),
            models.UniqueConstraint(
                fields=["project", "external_id"],
                condition=~Q(external_id=""),
                name="comparison_external_id_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"comparison #{self.pk} ({self.k}-way{', gold' if self.is_gold else ''})"


class ComparisonResponse(models.Model):
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="items")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="comparison_items")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["comparison_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "position"], name="comparison_position_unique"),
            models.UniqueConstraint(fields=["comparison", "response"], name="comparison_response_unique"),
            models.CheckConstraint(condition=Q(position__lt=MAX_K), name="comparison_position_range"),
        ]

    def __str__(self) -> str:
        return f"comparison #{self.comparison_id} position {self.position}: response #{self.response_id}"


class Assignment(models.Model):
    class State(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    state = models.CharField(max_length=16, choices=State.choices, default=State.LEASED)
    leased_at = models.DateTimeField()
    # A lease past this time is expired: its slot is back in the pool (the row stays, so the same person can
    # pick the item up again while nobody else has taken the slot).
    leased_until = models.DateTimeField()
    # Response ids in the order shown to this annotator (random per assignment against position bias).
    display_order = models.JSONField()
    skip_reason = models.CharField(max_length=300, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["comparison", "state", "leased_until"], name="assignment_slots_idx"),
            models.Index(fields=["annotator", "project", "state"], name="assignment_annotator_idx"),
            # Live leases of a project (the annotator's "left" count); submitted rows are not in it.
            models.Index(
                fields=["project", "leased_until"],
                condition=Q(state="leased"),
                name="assignment_live_lease_idx",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="assignment_unique_per_annotator"
            ),
            models.CheckConstraint(
                condition=Q(leased_until__gt=models.F("leased_at")), name="assignment_lease_order"
            ),
            models.CheckConstraint(
                condition=Q(state="leased") | Q(finished_at__isnull=False), name="assignment_finished_at_set"
            ),
        ]

    def __str__(self) -> str:
        return f"assignment #{self.pk} {self.annotator_id}→{self.comparison_id} ({self.state})"


class Ranking(models.Model):
    class Flag(models.TextChoices):
        UNSAFE = "unsafe", "Unsafe"
        BROKEN = "broken", "Broken"
        OFF_TOPIC = "off_topic", "Off-topic"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="rankings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rankings")
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="ranking")
    # Response id (as a string) -> dense rank (1 best; equal ranks are ties).
    ranks = models.JSONField()
    both_bad = models.BooleanField(default=False, help_text="Pairwise: neither response is acceptable.")
    flags = models.JSONField(default=list, blank=True)
    rationale = models.TextField(blank=True)
    seconds_spent = models.FloatField(default=0.0)
    display_order = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["annotator", "created_at"], name="ranking_annotator_day_idx")]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "annotator"], name="ranking_unique_per_annotator"),
            models.CheckConstraint(condition=Q(seconds_spent__gte=0), name="ranking_seconds_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"ranking #{self.pk} by {self.annotator_id} on {self.comparison_id}"


class Adjudication(models.Model):
    """The final ranking an admin recorded for a comparison where annotators disagreed; exports prefer it."""

    comparison = models.OneToOneField(Comparison, on_delete=models.CASCADE, related_name="adjudication")
    adjudicator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="adjudications"
    )
    ranks = models.JSONField()
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"adjudication of comparison #{self.comparison_id}"


class ImportJob(Job):
    """An uploaded import file, validated and written by a Celery task on the `default` queue, with its progress.

    The upload is kept under ARTIFACT_ROOT/imports/ (`upload_path`) until the job has finished, so a worker that
    dies half-way loses nothing: the task is redelivered and the import (one transaction) runs again from the file.
    """

    class Phase(models.TextChoices):
        WAITING = "", "Waiting"
        VALIDATE = "validate", "Checking every line"
        WRITE = "write", "Writing"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON Lines"
        CSV = "csv", "CSV"

    project_slug = models.SlugField(
        max_length=64, help_text="The project is created when the import succeeds."
    )
    file_name = models.CharField(max_length=255)
    file_format = models.CharField(max_length=8, choices=Format.choices, default=Format.JSONL)
    size_bytes = models.BigIntegerField(default=0)
    upload_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="The kept upload, relative to ARTIFACT_ROOT; cleared when finished.",
    )
    build_k = models.PositiveSmallIntegerField(null=True, blank=True)
    pairing = models.CharField(max_length=16, default="all")
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.WAITING, blank=True)
    lines = models.PositiveIntegerField(default=0, help_text="Lines checked so far.")
    rows_total = models.PositiveIntegerField(
        default=0, help_text="Prompts, responses and comparisons to write."
    )
    rows_done = models.PositiveIntegerField(default=0)
    progress = models.FloatField(default=0.0, help_text="0–1: checking is the first 40%, writing the rest.")
    counts = models.JSONField(default=dict, blank=True, help_text="The import report once done.")
    errors = models.JSONField(
        default=list, blank=True, help_text="Bad lines (line, field, message) on failure."
    )
    celery_task_id = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="import_jobs"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="importjob_progress_range"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running"]) | Q(finished_at__isnull=False),
                name="importjob_finished_at_set",
            ),
        ]

    def __str__(self) -> str:
        return f"import job #{self.pk} {self.file_name} → {self.project_slug} ({self.status})"

    @property
    def percent(self) -> int:
        return round(self.progress * 100)

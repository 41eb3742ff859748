"""Training runs and their stages; the model versions they start from and produce live in the registry."""

from pathlib import Path

from django.db import models

from core.models import Job, JobStatus, QueuedJob
from registry.artifacts import stage_folder


class TrainingRun(Job):
    """One training round: a pipeline of stages over a frozen snapshot of the project's preference data."""

    class Preset(models.TextChoices):
        RLHF = "rlhf", "RLHF: SFT → reward model → PPO"
        RFT = "rft", "RFT: SFT → PPO on predefined reward rules"
        PREFERENCE = "preference", "Preference: SFT → contrastive"
        REWARD = "reward", "Reward model only"
        SFT = "sft", "SFT only"

    project = models.ForeignKey("labeling.Project", on_delete=models.PROTECT, related_name="training_runs")
    preset = models.CharField(max_length=16, choices=Preset.choices)
    base_model = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="training_runs"
    )
    config = models.JSONField(default=dict, blank=True, help_text="Validated per-stage engine configs.")
    dataset_filters = models.JSONField(default=dict, blank=True)
    dataset_hash = models.CharField(max_length=64, blank=True)
    dataset_counts = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    sample_after = models.JSONField(
        null=True,
        blank=True,
        help_text="Sampling options: when set, the final policy generates new comparisons.",
    )
    created_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.preset} ({self.status})"


class StageRun(QueuedJob):
    """One stage of a run as executed by one Celery task on the `gpu` queue."""

    class Kind(models.TextChoices):
        SFT = "sft", "SFT"
        REWARD = "reward", "Reward model"
        PPO = "ppo", "PPO"
        CONTRASTIVE = "contrastive", "Contrastive (DPO/CPO)"

    class Peft(models.TextChoices):
        FULL = "full", "Full fine-tuning"
        LORA = "lora", "LoRA"
        ADAPTER = "adapter", "Bottleneck adapter"

    # The job statuses with `pending` for `queued`: a stage waits for the stages before it, then it is sent.
    Status = models.TextChoices(
        "Status",
        [("PENDING", ("pending", "Pending"))]
        + [(status.name, (status.value, status.label)) for status in JobStatus if status != JobStatus.QUEUED],
    )

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="stages")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    peft = models.CharField(max_length=16, choices=Peft.choices, default=Peft.FULL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    config = models.JSONField(default=dict, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(
        default=list, blank=True, help_text="[{step, values: {name: number}}], in order."
    )
    log_tail = models.TextField(blank=True)
    phase = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the running step is: {step, phase, detail, tokens, at}; empty between steps.",
    )
    checkpoint_path = models.CharField(max_length=500, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=128, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The version this stage registered (one per stage, one stage per version): the registry's lineage of runs.
    output_model = models.OneToOneField(
        "registry.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="produced_by_stage",
    )

    class Meta:
        ordering = ["run_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="stagerun_unique_position"),
            models.CheckConstraint(
                condition=models.Q(step__lte=models.F("total_steps")) | models.Q(total_steps=0),
                name="stagerun_step_within_total",
            ),
        ]

    def __str__(self) -> str:
        return f"stage {self.position} {self.kind}/{self.peft} of run #{self.run_id} ({self.status})"

    @property
    def output_dir(self) -> Path:
        """Where the stage writes its artifact (the engine keeps its checkpoints beside it)."""
        return stage_folder(run_id=self.run_id, position=self.position, kind=self.kind)

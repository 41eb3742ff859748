from django.db import models


class ModelVersion(models.Model):
    """One entry of the model registry: an immutable artifact on disk under ARTIFACT_ROOT, with its lineage.

    The bundled base model is the first row. Training stages register their outputs with `parent` set to the
    model they started from and `base` to the root of that lineage.
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
    stage_run = models.ForeignKey(
        "training.StageRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    dataset_hash = models.CharField(max_length=64, blank=True, help_text="Content hash of the training data.")
    use_for_sampling = models.BooleanField(
        default=False, help_text="The policy whose responses feed the annotators (one at a time)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
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


class TrainingRun(models.Model):
    """One training round: a pipeline of stages over a frozen snapshot of the project's preference data."""

    class Preset(models.TextChoices):
        RLHF = "rlhf", "RLHF: SFT → reward model → PPO"
        RFT = "rft", "RFT: SFT → PPO on predefined reward rules"
        PREFERENCE = "preference", "Preference: SFT → contrastive"
        REWARD = "reward", "Reward model only"
        SFT = "sft", "SFT only"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey("labeling.Project", on_delete=models.PROTECT, related_name="training_runs")
    preset = models.CharField(max_length=16, choices=Preset.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    base_model = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="training_runs")
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
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.preset} ({self.status})"


class StageRun(models.Model):
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

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

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
    celery_task_id = models.CharField(max_length=255, blank=True)
    enqueued_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its task was last published; empty: not yet (core.jobs sends it).",
    )
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=128, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    output_model = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="produced_by_stages"
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

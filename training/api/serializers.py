"""Shapes of the training-runs API; `training_run_launch` validates the values."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from labeling.models import Project
from registry.models import ModelVersion
from training.engine.common import json_safe
from training.models import StageRun, TrainingRun


class StageRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = StageRun
        fields = [
            "id",
            "position",
            "kind",
            "peft",
            "status",
            "step",
            "total_steps",
            "output_model",
            "started_at",
            "finished_at",
            "error",
        ]


class MetricPointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    values = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="{metric name: value}; null where the value was NaN or infinite.",
    )
    at = serializers.FloatField(required=False, help_text="When the step was reported (Unix seconds).")


class StagePhaseSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    phase = serializers.CharField(help_text="e.g. rollout, scoring, update (PPO).")
    detail = serializers.CharField()
    tokens = serializers.IntegerField(allow_null=True)
    at = serializers.FloatField(help_text="Unix seconds.")


class StageRunDetailSerializer(StageRunSerializer):
    """A stage as its run's page shows it: the metric history behind the curves, the log tail, the running phase."""

    metrics = serializers.SerializerMethodField(help_text="Every reported step, in order.")
    phase = serializers.SerializerMethodField(
        help_text="Where the running step is (a long PPO iteration); null between steps."
    )

    class Meta(StageRunSerializer.Meta):
        fields = [*StageRunSerializer.Meta.fields, "metrics", "log_tail", "phase", "device", "worker"]

    @extend_schema_field(MetricPointSerializer(many=True))
    def get_metrics(self, stage: StageRun) -> list[dict]:
        return json_safe(stage.metrics or [])  # a NaN left in an old row would make the JSON invalid

    @extend_schema_field(StagePhaseSerializer(allow_null=True))
    def get_phase(self, stage: StageRun) -> dict | None:
        return stage.phase or None


class TrainingRunSerializer(serializers.ModelSerializer):
    """A run in a list: its stages' progress, without their metric histories and logs (see the run itself)."""

    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    stages = StageRunSerializer(many=True, read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "project",
            "preset",
            "status",
            "base_model",
            "config",
            "dataset_filters",
            "dataset_hash",
            "dataset_counts",
            "error",
            "stages",
            "created_at",
            "started_at",
            "finished_at",
        ]


class TrainingRunDetailSerializer(TrainingRunSerializer):
    """One run with everything its page shows of each stage."""

    stages = StageRunDetailSerializer(many=True, read_only=True)


class TrainingRunLaunchSerializer(serializers.Serializer):
    """Launch a training run (admins). Only the shapes are checked here: `training_run_launch` validates the
    values and answers 400 with one list of messages per field (`preset`, `filters`, `sample_after.<option>` such as
    `sample_after.limit` or `sample_after.params.temperature`, `base_model`, `config`, `peft.<stage>`,
    `<stage>.peft.method`, `<stage>.<config field>` such as `sft.max_steps`, `sft.device`,
    `sft.peft.lora_target_modules`, `ppo.rules`). Numbers outside realistic ranges, strings or booleans where numbers
    go, and devices other than auto / cpu / cuda / cuda:N / mps are refused by field."""

    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    preset = serializers.CharField(
        help_text="rlhf | rft | preference | reward | sft (its stages run in order)."
    )
    base_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(),
        required=False,
        allow_null=True,
        help_text="A policy model version; by default the registry's base model.",
    )
    peft = serializers.JSONField(
        required=False,
        help_text='"full" | "lora" | "adapter" for every stage, or {stage kind: method}; a stage without one uses '
        'its config\'s `peft.method`, else "full".',
    )
    stage_configs = serializers.DictField(
        child=serializers.DictField(),
        required=False,
        default=dict,
        help_text='{stage kind: {engine config field: value}}, e.g. {"sft": {"max_steps": 100}}.',
    )
    filters = serializers.DictField(
        required=False, default=dict, help_text="Dataset filters (see the exports' `filters`)."
    )
    sample_after = serializers.DictField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Sample the new policy's answers for ranking when the run succeeds (sampling job options).",
    )

    def validate_peft(self, value):
        if isinstance(value, str) or (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            return value
        raise serializers.ValidationError('A method name, or an object {"stage kind": "method"}.')

"""Shapes of the loop API; `sampling_job_create` and the leaderboard selector hold the rules."""

from __future__ import annotations

from rest_framework import serializers

from labeling.models import Project
from loop.models import SamplingJob
from loop.services.sampling import MAX_LIMIT, PARAM_LIMITS
from registry.models import ModelVersion


class SamplingJobSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = SamplingJob
        fields = [
            "id",
            "project",
            "model_version",
            "reward_model",
            "pool",
            "limit",
            "params",
            "make_comparisons",
            "uncertain_share",
            "status",
            "total",
            "done",
            "responses_created",
            "comparisons_created",
            "device",
            "error",
            "created_by",
            "created_at",
            "enqueued_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class SamplingJobCreateSerializer(serializers.Serializer):
    """Start a sampling job, as the sampling page does (admins): a policy answers the project's prompt pool and,
    unless `make_comparisons` is false, its answers become comparisons, the most uncertain served first."""

    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    model_version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(), help_text="The policy that answers."
    )
    reward_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(),
        required=False,
        allow_null=True,
        default=None,
        help_text="Scores the new pairs for active selection; the newest reward model when empty.",
    )
    pool = serializers.ChoiceField(choices=SamplingJob.Pool.choices, default=SamplingJob.Pool.NEW)
    limit = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=MAX_LIMIT,
        help_text="At most this many prompts; null for the whole pool.",
    )
    params = serializers.DictField(
        required=False,
        default=dict,
        help_text=f"Generation parameters ({', '.join(PARAM_LIMITS)}); the defaults for those not given.",
    )
    make_comparisons = serializers.BooleanField(required=False, default=True)
    uncertain_share = serializers.FloatField(
        required=False,
        default=0.5,
        min_value=0,
        max_value=1,
        help_text="Share of the new comparisons pushed to the front of the queue (most uncertain first).",
    )


class RatingSerializer(serializers.Serializer):
    strength = serializers.FloatField(help_text="Bradley-Terry strength; their geometric mean is 1.")
    elo = serializers.FloatField()
    elo_low = serializers.FloatField(help_text="Bootstrap 95% interval.")
    elo_high = serializers.FloatField()


class WinRateSerializer(serializers.Serializer):
    win_rate = serializers.FloatField(help_text="Ties count half.")
    games = serializers.IntegerField()


class LeaderboardRowSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="`#<id> <name>` of a model version, or `external: <source>`.")
    rank = serializers.IntegerField(
        allow_null=True, help_text="Among established entries; null if preliminary."
    )
    rating = RatingSerializer(allow_null=True, help_text="Null until the model played a game.")
    games = serializers.IntegerField()
    preliminary = serializers.BooleanField(help_text="Fewer games than `min_games`: ranked after the others.")
    is_base = serializers.BooleanField(help_text="The model every round is measured against.")
    vs_base = WinRateSerializer(
        allow_null=True, help_text="Against the base model; null for the base itself."
    )


class WinRatePairSerializer(WinRateSerializer):
    model = serializers.CharField()
    opponent = serializers.CharField()


class LeaderboardSerializer(serializers.Serializer):
    project = serializers.CharField()
    games = serializers.IntegerField(
        help_text="Pairwise games in the project's human rankings (gold excluded)."
    )
    base = serializers.CharField(allow_null=True)
    min_games = serializers.IntegerField()
    rows = LeaderboardRowSerializer(many=True)
    win_rates = WinRatePairSerializer(many=True, help_text="How often `model` beat `opponent`.")

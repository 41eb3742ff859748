"""Sampling jobs (admins, as the sampling page) and the leaderboard (researchers and admins, as its page)."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from core.api.permissions import IsAdmin, IsResearcherOrAdmin
from core.api.schema import BROKER_DOWN
from labeling.models import Project
from loop.api import serializers
from loop.models import SamplingJob
from loop.selectors import PRELIMINARY_BELOW_GAMES, Leaderboard, leaderboard
from loop.services.sampling import sampling_job_create


class SamplingJobFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = SamplingJob
        fields = ["project", "status", "model_version", "pool"]


class SamplingJobViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Sampling jobs, newest first, with their progress (admins): start one, then watch it here."""

    queryset = SamplingJob.objects.select_related("project", "created_by")
    serializer_class = serializers.SamplingJobSerializer
    permission_classes = [IsAdmin]
    filterset_class = SamplingJobFilter
    ordering_fields = ["id", "created_at"]

    @extend_schema(
        request=serializers.SamplingJobCreateSerializer,
        responses={
            201: serializers.SamplingJobSerializer,
            400: OpenApiResponse(
                description="Nothing created or enqueued: {field: [messages]}, e.g. `model_version` (not a "
                "policy), `params` (each bad generation parameter by name)."
            ),
            503: OpenApiResponse(description=BROKER_DOWN),
        },
    )
    def create(self, request, *args, **kwargs):
        """Queue a sampling job on the `default` queue: the policy answers the pool, then comparisons are built."""
        data = serializers.SamplingJobCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = sampling_job_create(**data.validated_data, created_by=request.user)
        return Response(self.get_serializer(job).data, status=status.HTTP_201_CREATED)


def _leaderboard_data(*, project: Project, board: Leaderboard) -> dict:
    def rating(row) -> dict | None:
        if row.rating is None:
            return None
        r = row.rating
        return {"strength": r.strength, "elo": r.elo, "elo_low": r.elo_low, "elo_high": r.elo_high}

    return {
        "project": project.slug,
        "games": board.games,
        "base": board.base,
        "min_games": PRELIMINARY_BELOW_GAMES,
        "rows": [
            {
                "model": row.model,
                "rank": row.rank,
                "rating": rating(row),
                "games": row.games,
                "preliminary": row.preliminary,
                "is_base": row.is_base,
                "vs_base": {"win_rate": row.vs_base[0], "games": row.vs_base[1]} if row.vs_base else None,
            }
            for row in board.rows
        ],
        "win_rates": [
            {"model": model, "opponent": opponent, "win_rate": rate, "games": games}
            for (model, opponent), (rate, games) in sorted(board.win_rates.items())
        ],
    }


class LeaderboardViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Bradley-Terry ratings of every model version from a project's human rankings, as the leaderboard page."""

    queryset = Project.objects.all()
    lookup_field = "slug"
    serializer_class = serializers.LeaderboardSerializer
    permission_classes = [IsResearcherOrAdmin]
    filter_backends: list = []

    def retrieve(self, request, *args, **kwargs):
        """Established entries by rating, then preliminary ones (fewer than `min_games` games), then the base
        model if it never played; bootstrap 95% intervals; the win rate of every pair that played."""
        project = self.get_object()
        return Response(_leaderboard_data(project=project, board=leaderboard(project=project)))

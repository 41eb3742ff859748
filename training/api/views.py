"""Training runs over the API: researchers and admins read, admins launch and steer (the run pages' rules)."""

from __future__ import annotations

import django_filters
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from core.api.permissions import IsAdmin, IsResearcherOrAdmin
from core.api.schema import BROKER_DOWN
from training.api import serializers
from training.models import StageRun, TrainingRun
from training.services.runs import (
    stage_run_resume,
    stage_run_retry,
    training_run_cancel,
    training_run_launch,
)


class TrainingRunFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = TrainingRun
        fields = ["project", "status", "preset"]


def _stage_restart_schema():
    """The OpenAPI description shared by the resume and retry actions of a stage."""
    return extend_schema(
        request=None,
        parameters=[_stage_path_parameter()],
        responses={
            200: serializers.TrainingRunDetailSerializer,
            400: OpenApiResponse(description="Only a failed or cancelled stage can restart."),
            503: OpenApiResponse(description=BROKER_DOWN),
        },
    )


def _stage_path_parameter() -> OpenApiParameter:
    return OpenApiParameter(
        "stage_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="A stage of this run."
    )


class TrainingRunViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Training runs with their stages: researchers and admins read; admins launch, cancel, resume and retry."""

    queryset = TrainingRun.objects.select_related("project").prefetch_related(
        Prefetch("stages", queryset=StageRun.objects.order_by("position"))
    )
    serializer_class = serializers.TrainingRunDetailSerializer
    permission_classes = [IsResearcherOrAdmin]
    filterset_class = TrainingRunFilter
    ordering_fields = ["id", "created_at"]

    def get_serializer_class(self):
        if self.action == "list":
            return serializers.TrainingRunSerializer
        return serializers.TrainingRunDetailSerializer

    def get_permissions(self):
        if self.action in ("create", "cancel", "resume", "retry"):
            return [IsAdmin()]
        return super().get_permissions()

    def _run_payload(self, run: TrainingRun, code: int = status.HTTP_200_OK) -> Response:
        run = self.get_queryset().get(pk=run.pk)
        return Response(self.get_serializer(run).data, status=code)

    @extend_schema(
        request=serializers.TrainingRunLaunchSerializer,
        responses={
            201: serializers.TrainingRunDetailSerializer,
            400: OpenApiResponse(
                description="Nothing created or enqueued: {field: [messages]}, e.g. `sft.max_steps`, `filters`."
            ),
            503: OpenApiResponse(description=BROKER_DOWN),
        },
    )
    def create(self, request, *args, **kwargs):
        """Launch a run: validate, snapshot the dataset, create the stages, enqueue the first on the `gpu` queue."""
        data = serializers.TrainingRunLaunchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        run = training_run_launch(
            project=values["project"],
            preset=values["preset"],
            created_by=request.user,
            base_model=values.get("base_model"),
            peft=values.get("peft"),
            stage_configs=values.get("stage_configs") or None,
            filters=values.get("filters") or None,
            sample_after=values.get("sample_after"),
        )
        return self._run_payload(run, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=serializers.TrainingRunDetailSerializer)
    @action(detail=True, methods=["post"], filterset_class=None)
    def cancel(self, request, pk=None):
        """Cancel: stages not started yet stop now, a running stage after its current optimizer step."""
        run = training_run_cancel(run=self.get_object())
        return self._run_payload(run)

    def _stage(self, stage_id) -> StageRun:
        return get_object_or_404(StageRun, pk=stage_id, run=self.get_object())

    @_stage_restart_schema()
    @action(
        detail=True, methods=["post"], url_path=r"stages/(?P<stage_id>[0-9]+)/resume", filterset_class=None
    )
    def resume(self, request, pk=None, stage_id=None):
        """Continue a failed or cancelled stage from its last checkpoint."""
        stage = stage_run_resume(stage_run=self._stage(stage_id))
        return self._run_payload(stage.run)

    @_stage_restart_schema()
    @action(
        detail=True, methods=["post"], url_path=r"stages/(?P<stage_id>[0-9]+)/retry", filterset_class=None
    )
    def retry(self, request, pk=None, stage_id=None):
        """Run a failed or cancelled stage again from step 0 (its checkpoints are dropped)."""
        stage = stage_run_retry(stage_run=self._stage(stage_id))
        return self._run_payload(stage.run)

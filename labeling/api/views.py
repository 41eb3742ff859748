"""REST API views: authentication, permissions, (de)serialisation; every rule is in a service or a selector."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response as ApiResponse

from core.api.parsers import StrictFormParser, StrictJSONParser, StrictMultiPartParser
from core.api.permissions import IsAdmin, IsAnnotator, IsResearcherOrAdmin, ReadAnyRoleWriteAdmin
from core.roles import Role
from core.selectors import user_roles
from labeling.api import filters, hot_path, serializers
from labeling.api.import_jobs import ImportJobSerializer
from labeling.models import (
    Comparison,
    ComparisonResponse,
    ImportJob,
    Project,
    Prompt,
    Ranking,
    Response,
)
from labeling.selectors.annotation import assignment_responses, project_for_slug
from labeling.services.import_jobs import (
    import_job_create,
    import_job_messages,
    import_job_run,
    import_sync_max_bytes,
    import_upload_check,
)
from labeling.services.leasing import assignment_lease_next
from labeling.services.projects import project_get_or_create
from labeling.services.rankings import assignment_skip, ranking_submit


class ProjectViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Projects: every role reads, admins create."""

    queryset = Project.objects.all()
    serializer_class = serializers.ProjectSerializer
    permission_classes = [ReadAnyRoleWriteAdmin]
    lookup_field = "slug"
    filterset_fields = ["mode"]
    ordering_fields = ["slug", "created_at"]

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        slug = data.pop("slug")
        project, created = project_get_or_create(slug=slug, defaults=data)
        if not created:
            raise ValidationError({"slug": f"A project {slug!r} exists already."})
        serializer.instance = project


class PromptViewSet(viewsets.ReadOnlyModelViewSet):
    """Prompts (researchers and admins); admins import prompts, responses and comparisons in bulk."""

    queryset = Prompt.objects.select_related("project")
    serializer_class = serializers.PromptSerializer
    permission_classes = [IsResearcherOrAdmin]
    filterset_class = filters.PromptFilter
    ordering_fields = ["id", "created_at"]

    @extend_schema(
        request={
            "application/json": serializers.PromptImportSerializer,
            "multipart/form-data": serializers.PromptImportSerializer,
        },
        responses={
            201: serializers.ImportReportSerializer,
            202: ImportJobSerializer,
            400: OpenApiResponse(description="Nothing imported: `errors` lists every bad line and field."),
        },
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        permission_classes=[IsAdmin],
        parser_classes=[StrictJSONParser, StrictMultiPartParser, StrictFormParser],
        serializer_class=serializers.PromptImportSerializer,
        filterset_class=None,
    )
    def bulk_import(self, request):
        """The same upload rules and whole-file validation as the upload page and `manage.py import_data`.

        Up to LABELING_IMPORT_SYNC_MAX_BYTES the import runs now (201 with the report, or 400 with every bad
        line); a larger one is queued as a background job (202): watch it at `/api/v1/import-jobs/{id}/`.
        """
        data = serializers.PromptImportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if values.get("file") is not None:
            upload = values["file"]
            fmt = import_upload_check(name=upload.name, size=upload.size, content_type=upload.content_type)
            name, raw = upload.name, upload.read()
        else:
            raw = "\n".join(json.dumps(record, ensure_ascii=False) for record in values["records"]).encode()
            name, fmt = "records.jsonl", "jsonl"
            import_upload_check(name=name, size=len(raw))
        background = len(raw) > import_sync_max_bytes()
        job = import_job_create(
            project_slug=values["project"],
            file_name=name,
            data=raw,
            file_format=fmt,
            build_k=values.get("build_k"),
            pairing=values["pairing"],
            created_by=request.user,
            enqueue=background,
        )
        if background:
            return ApiResponse(ImportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
        job = import_job_run(job_id=job.pk)
        if job.status != ImportJob.Status.SUCCEEDED:
            return ApiResponse({"errors": import_job_messages(job=job)}, status=status.HTTP_400_BAD_REQUEST)
        payload = {**job.counts, "job": job.pk}
        return ApiResponse(serializers.ImportReportSerializer(payload).data, status=status.HTTP_201_CREATED)


class ResponseViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Response.objects.all()
    serializer_class = serializers.ResponseSerializer
    permission_classes = [IsResearcherOrAdmin]
    filterset_class = filters.ResponseFilter
    ordering_fields = ["id", "created_at"]


class ComparisonViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Comparison.objects.select_related("project").prefetch_related(
        Prefetch("items", queryset=ComparisonResponse.objects.order_by("position"))
    )
    serializer_class = serializers.ComparisonSerializer
    permission_classes = [IsResearcherOrAdmin]
    filterset_class = filters.ComparisonFilter
    ordering_fields = ["id", "priority", "created_at"]


@extend_schema_view(
    list=extend_schema(description="Researchers and admins see every ranking; annotators only their own."),
    retrieve=extend_schema(
        description="Researchers and admins see every ranking; annotators only their own."
    ),
)
class RankingViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Rankings; annotators lease the next item (`next`), then `submit` or `skip` it, as in the browser."""

    serializer_class = serializers.RankingSerializer
    filterset_class = filters.RankingFilter
    ordering_fields = ["id", "created_at"]

    def dispatch(self, request, *args, **kwargs):
        # The annotator loop's plain requests skip DRF's machinery (labeling.api.hot_path: same answers).
        fast = hot_path.answer(request, self.action_map.get(request.method.lower()), self)
        if fast is not None:
            return fast
        return super().dispatch(request, *args, **kwargs)

    def get_permissions(self):
        if self.action in ("next", "submit", "skip"):
            return [IsAnnotator()]
        return [(IsAnnotator | IsResearcherOrAdmin)()]

    def get_queryset(self):
        queryset = Ranking.objects.select_related("comparison__project")
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return queryset.none()
        roles = user_roles(user=self.request.user)
        if not roles & {Role.RESEARCHER, Role.ADMIN}:
            queryset = queryset.filter(annotator=self.request.user)
        return queryset

    @extend_schema(
        request=serializers.LeaseRequestSerializer,
        responses={
            200: serializers.AssignmentSerializer,
            204: OpenApiResponse(description="Nothing to rank."),
        },
    )
    @action(detail=False, methods=["post"], filterset_class=None)
    def next(self, request):
        """Lease the next comparison (or renew the live lease you hold): the same queue as the browser."""
        data = serializers.LeaseRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        project = project_for_slug(slug=data.validated_data["project"])
        if project is None:
            raise Http404("No such project.")
        assignment = assignment_lease_next(project=project, annotator=request.user)
        if assignment is None:
            return ApiResponse(status=status.HTTP_204_NO_CONTENT)
        return ApiResponse(
            serializers.assignment_data(assignment, assignment_responses(assignment=assignment))
        )

    @extend_schema(request=serializers.SubmitSerializer, responses={201: serializers.RankingSerializer})
    @action(detail=False, methods=["post"], filterset_class=None)
    def submit(self, request):
        """Submit a ranking of your leased item; the errors are the annotator UI's, word for word."""
        data = serializers.SubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        ranking = ranking_submit(
            assignment_id=values["assignment"],
            annotator=request.user,
            choice=values.get("choice") or None,
            ranks=values.get("ranks"),
            flags=values.get("flags", []),
            rationale=values.get("rationale", ""),
        )
        return ApiResponse(serializers.ranking_data(ranking), status=status.HTTP_201_CREATED)

    @extend_schema(request=serializers.SkipSerializer, responses={204: None})
    @action(detail=False, methods=["post"], filterset_class=None)
    def skip(self, request):
        """Give your leased item back with a reason; it never comes back to you."""
        data = serializers.SkipSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        assignment_skip(
            assignment_id=data.validated_data["assignment"],
            annotator=request.user,
            reason=data.validated_data["reason"],
        )
        return ApiResponse(status=status.HTTP_204_NO_CONTENT)

"""Serializers: the shape of requests and responses only; the rules live in the services."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from labeling.models import MAX_K, MIN_K, Comparison, Project, Prompt, Ranking, Response
from labeling.pseudonyms import annotator_pseudonym
from labeling.services.projects import PAIRINGS
from labeling.services.rankings import SKIP_REASONS


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = [
            "id",
            "slug",
            "name",
            "guidelines",
            "mode",
            "k",
            "allow_ties",
            "overlap",
            "lease_seconds",
            "gold_ratio",
            "trust_threshold",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField()


class PromptSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    messages = MessageSerializer(many=True, read_only=True)

    class Meta:
        model = Prompt
        fields = ["id", "project", "external_id", "messages", "domain", "metadata", "created_at"]


class PromptImportSerializer(serializers.Serializer):
    """Records in the import format (one object per JSONL line) or a JSONL/CSV file upload; same validation."""

    project = serializers.SlugField(max_length=64, help_text="Project slug; created when missing.")
    records = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        help_text="Prompt, response or comparison objects, exactly as lines of a JSONL import file.",
    )
    file = serializers.FileField(
        required=False,
        help_text="A .jsonl, .ndjson or .csv file (multipart upload), the upload page's rules.",
    )
    build_k = serializers.IntegerField(required=False, allow_null=True, min_value=MIN_K, max_value=MAX_K)
    pairing = serializers.ChoiceField(choices=list(PAIRINGS), default="all")

    def validate(self, attrs):
        if bool(attrs.get("records")) == bool(attrs.get("file")):
            raise serializers.ValidationError("Send either `records` or a `file`.")
        return attrs


class ImportReportSerializer(serializers.Serializer):
    lines = serializers.IntegerField()
    prompts_created = serializers.IntegerField()
    prompts_existing = serializers.IntegerField()
    responses_created = serializers.IntegerField()
    responses_existing = serializers.IntegerField()
    comparisons_created = serializers.IntegerField()
    comparisons_existing = serializers.IntegerField()
    comparisons_built = serializers.IntegerField()
    summary = serializers.CharField()
    job = serializers.IntegerField(help_text="The import job that ran it (`/api/v1/import-jobs/{id}/`).")


class ResponseSerializer(serializers.ModelSerializer):
    class Meta:
        model = Response
        fields = [
            "id",
            "prompt",
            "external_id",
            "content",
            "model_version",
            "source_name",
            "generation_params",
            "created_at",
        ]


class ComparisonSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    response_ids = serializers.SerializerMethodField()

    class Meta:
        model = Comparison
        fields = [
            "id",
            "project",
            "prompt",
            "external_id",
            "k",
            "response_ids",
            "priority",
            "is_gold",
            "status",
            "created_at",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_response_ids(self, comparison: Comparison) -> list[int]:
        return [item.response_id for item in comparison.items.all()]


class RankingSerializer(serializers.ModelSerializer):
    annotator = serializers.SerializerMethodField(help_text="Pseudonymised annotator id (stable keyed hash).")
    project = serializers.SlugRelatedField(source="comparison.project", slug_field="slug", read_only=True)

    class Meta:
        model = Ranking
        fields = [
            "id",
            "comparison",
            "project",
            "annotator",
            "ranks",
            "both_bad",
            "flags",
            "rationale",
            "seconds_spent",
            "display_order",
            "created_at",
        ]

    def get_annotator(self, ranking: Ranking) -> str:
        return annotator_pseudonym(ranking.annotator_id)


class LeaseRequestSerializer(serializers.Serializer):
    project = serializers.SlugField(help_text="Slug of the project to take the next item from.")


class ShownResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    letter = serializers.CharField()
    position = serializers.IntegerField(help_text="1-based position in this annotator's display order.")
    content = serializers.CharField()


class AssignmentSerializer(serializers.Serializer):
    """A leased item: rank `responses` (shown in this order) and submit before `leased_until`."""

    assignment = serializers.IntegerField(source="assignment.id")
    project = serializers.CharField(source="assignment.project.slug")
    comparison = serializers.IntegerField(source="assignment.comparison_id")
    # No `is_gold`: an annotator who can tell a gold item from the others would rank it with extra care.
    leased_until = serializers.DateTimeField(source="assignment.leased_until")
    allow_ties = serializers.BooleanField(source="assignment.project.allow_ties")
    prompt = MessageSerializer(many=True, source="assignment.comparison.prompt.messages")
    responses = ShownResponseSerializer(many=True)


# The annotator loop's two responses, built directly: a DRF serializer instance costs more CPU than the whole
# lease. They produce exactly what AssignmentSerializer / RankingSerializer would (tests compare them), and those
# serializers still describe them in the OpenAPI schema.
_datetime = serializers.DateTimeField()


def assignment_data(assignment, shown) -> dict:
    """AssignmentSerializer's output for a leased assignment and its ShownResponse list."""
    return {
        "assignment": assignment.id,
        "project": assignment.project.slug,
        "comparison": assignment.comparison_id,
        "leased_until": _datetime.to_representation(assignment.leased_until),
        "allow_ties": assignment.project.allow_ties,
        "prompt": [
            {"role": message["role"], "content": message["content"]}
            for message in assignment.comparison.prompt.messages
        ],
        "responses": [
            {
                "id": item.response.id,
                "letter": item.letter,
                "position": item.position,
                "content": item.response.content,
            }
            for item in shown
        ],
    }


def ranking_data(ranking: Ranking) -> dict:
    """RankingSerializer's output for one ranking."""
    return {
        "id": ranking.id,
        "comparison": ranking.comparison_id,
        "project": ranking.comparison.project.slug,
        "annotator": annotator_pseudonym(ranking.annotator_id),
        "ranks": ranking.ranks,
        "both_bad": ranking.both_bad,
        "flags": ranking.flags,
        "rationale": ranking.rationale,
        "seconds_spent": float(ranking.seconds_spent),
        "display_order": ranking.display_order,
        "created_at": _datetime.to_representation(ranking.created_at),
    }


class SubmitSerializer(serializers.Serializer):
    """Give `choice` (a | b | tie | both_bad, relative to the displayed order) for a pairwise item or `ranks`
    ({response id: rank}, 1 best, equal ranks tie) for any item. Validation is the annotator UI's."""

    assignment = serializers.IntegerField()
    choice = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    ranks = serializers.DictField(child=serializers.JSONField(), required=False, allow_null=True)
    flags = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    rationale = serializers.CharField(required=False, allow_blank=True, default="")


class SkipSerializer(serializers.Serializer):
    assignment = serializers.IntegerField()
    reason = serializers.CharField(help_text=f"One of {', '.join(SKIP_REASONS)} or free text.")

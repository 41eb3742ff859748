"""The exports page's form: project, format, file type and the dataset filters (input shape only)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from exports.filters import PreferenceFilters
from exports.models import Export
from labeling.models import Project

AGGREGATION_CHOICES = [
    ("majority", "One consensus ranking per comparison (majority)"),
    ("all", "Every vote, one row per annotator"),
]


class ExportForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"), to_field_name="slug")
    format = forms.ChoiceField(choices=Export.Format.choices, initial=Export.Format.PAIRWISE)
    file_type = forms.ChoiceField(
        label="File", choices=Export.FileType.choices, initial=Export.FileType.JSONL
    )
    aggregation = forms.ChoiceField(
        choices=AGGREGATION_CHOICES, initial="majority", help_text="An adjudication replaces the votes."
    )
    min_agreement = forms.FloatField(
        label="Minimum agreement", required=False, min_value=0, max_value=1,
        help_text="0–1, pairwise agreement of a comparison's votes; empty keeps every comparison.",
    )  # fmt: skip
    date_from = forms.DateField(
        label="Submitted from", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        label="Submitted until", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    exclude_flagged = forms.BooleanField(
        label="Leave out flagged and both-bad items", required=False, initial=True
    )
    adjudicated_only = forms.BooleanField(label="Adjudicated comparisons only", required=False)
    gold_qualified_only = forms.BooleanField(
        label="Only votes of annotators who pass the gold items", required=False
    )

    def dataset_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ("project", "format", "file_type")]

    def filter_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name not in ("project", "format", "file_type")]

    def clean(self) -> dict:
        """Build the PreferenceFilters here, so a rule between two fields (dates) shows beside its field."""
        data = super().clean()
        if any(name in self.errors for name in ("aggregation", "min_agreement", "date_from", "date_to")):
            return data
        try:
            self.preference_filters = PreferenceFilters(
                date_from=data.get("date_from"),
                date_to=data.get("date_to"),
                min_agreement=data.get("min_agreement"),
                exclude_flagged=bool(data.get("exclude_flagged")),
                gold_qualified_only=bool(data.get("gold_qualified_only")),
                adjudicated_only=bool(data.get("adjudicated_only")),
                aggregation=data.get("aggregation") or "majority",
            )
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                self.add_error(name if name in self.fields else None, messages)
        return data

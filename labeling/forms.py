"""Forms of the labeling pages (input shape only; the rules live in the services)."""

from __future__ import annotations

from django import forms
from django.core.validators import RegexValidator

from labeling.models import MAX_K, MIN_K
from labeling.services.imports import import_max_bytes
from labeling.services.projects import PAIRINGS
from labeling.services.rankings import SKIP_REASONS


class ImportForm(forms.Form):
    project = forms.CharField(
        max_length=64,
        validators=[RegexValidator(r"^[-a-zA-Z0-9_]+$", "Letters, digits, - and _ only.")],
        help_text="Slug of the project; created when missing.",
    )
    file = forms.FileField(help_text="JSONL or CSV (by extension).")
    build_k = forms.IntegerField(
        required=False, min_value=MIN_K, max_value=MAX_K, label="Build comparisons of k responses"
    )
    pairing = forms.ChoiceField(choices=[(p, p) for p in PAIRINGS], initial="all")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = import_max_bytes()
        if upload.size > limit:
            raise forms.ValidationError(
                f"The file is {upload.size / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB. Split it or use "
                "`manage.py import_data`."
            )
        name = upload.name.lower()
        if not (name.endswith(".jsonl") or name.endswith(".csv") or name.endswith(".ndjson")):
            raise forms.ValidationError("Upload a .jsonl or .csv file.")
        return upload

    @property
    def file_format(self) -> str:
        return "csv" if self.cleaned_data["file"].name.lower().endswith(".csv") else "jsonl"


class SkipForm(forms.Form):
    reason = forms.ChoiceField(choices=list(SKIP_REASONS.items()))


def ranks_from_post(data, response_ids) -> dict[str, str]:
    """Collect rank_<response id> fields of a ranking form (any rank_* field, so foreign ids are caught too)."""
    ranks = {key.removeprefix("rank_"): value for key, value in data.items() if key.startswith("rank_")}
    for rid in response_ids:
        ranks.setdefault(str(rid), "")
    return ranks

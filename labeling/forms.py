"""Forms of the labeling pages (input shape only; the rules live in the services)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

from labeling.models import MAX_K, MIN_K
from labeling.services.import_jobs import import_upload_check
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
        try:
            self.file_format = import_upload_check(
                name=upload.name, size=upload.size, content_type=upload.content_type
            )
        except ValidationError as error:
            raise forms.ValidationError(error.message_dict["file"]) from None
        return upload


class SkipForm(forms.Form):
    reason = forms.ChoiceField(choices=list(SKIP_REASONS.items()))


def ranks_from_post(data, response_ids) -> dict[str, str]:
    """Collect rank_<response id> fields of a ranking form (any rank_* field, so foreign ids are caught too)."""
    ranks = {key.removeprefix("rank_"): value for key, value in data.items() if key.startswith("rank_")}
    for rid in response_ids:
        ranks.setdefault(str(rid), "")
    return ranks

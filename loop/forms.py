import json

from django import forms

from labeling.models import Project
from loop.models import SamplingJob
from training.models import ModelVersion


class SamplingForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"), to_field_name="slug")
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(kind="policy").order_by("-id")
    )
    pool = forms.ChoiceField(choices=SamplingJob.Pool.choices, initial=SamplingJob.Pool.NEW)
    limit = forms.IntegerField(required=False, min_value=1, help_text="At most this many prompts.")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=128)
    temperature = forms.FloatField(min_value=0, initial=0.7)
    top_p = forms.FloatField(min_value=0.01, max_value=1, initial=0.95)
    uncertain_share = forms.FloatField(
        min_value=0,
        max_value=1,
        initial=0.5,
        help_text="Share of new comparisons pushed to the front (most uncertain).",
    )
    make_comparisons = forms.BooleanField(required=False, initial=True)

    def params(self) -> dict:
        data = self.cleaned_data
        return {key: data[key] for key in ("max_new_tokens", "temperature", "top_p")}


def params_json(params: dict) -> str:
    return json.dumps(params, sort_keys=True)

from django import forms

from labeling.models import Project
from labeling.selectors.annotation import sole_project_slug
from loop.models import SamplingJob
from registry.models import ModelVersion
from registry.selectors import policies, sampling_policy


class PolicyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        return f"{obj.name} (#{obj.pk}){' · sampling now' if obj.use_for_sampling else ''}"


# Short labels: the select sits in a narrow grid column; the help text says what each pool holds.
POOL_CHOICES = [
    (SamplingJob.Pool.NEW, "New to this model"),
    (SamplingJob.Pool.ALL, "All prompts"),
    (SamplingJob.Pool.HELD_OUT, "Held-out prompts"),
]


class SamplingForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"), to_field_name="slug")
    model_version = PolicyChoiceField(queryset=policies(), label="Policy")
    pool = forms.ChoiceField(
        choices=POOL_CHOICES,
        initial=SamplingJob.Pool.NEW,
        label="Prompt pool",
        help_text="New: prompts this policy has not answered yet. Held out: prompts whose metadata has "
        "held_out = true.",
    )
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

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.initial.get("project"):
            self.initial["project"] = sole_project_slug()
        if not self.initial.get("model_version"):
            sampling = sampling_policy()
            if sampling is not None:
                self.initial["model_version"] = sampling.pk

    def params(self) -> dict:
        data = self.cleaned_data
        return {key: data[key] for key in ("max_new_tokens", "temperature", "top_p")}

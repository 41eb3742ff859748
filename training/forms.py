"""The launch form: preset, PEFT per stage, key hyperparameters, advanced JSON, data filters."""

from __future__ import annotations

import json

from django import forms

from labeling.models import Project
from training.models import ModelVersion, StageRun, TrainingRun
from training.services.runs import PRESET_STAGES

KEY_HYPERPARAMETERS = ("max_steps", "learning_rate", "batch_size")


class LaunchForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"), to_field_name="slug")
    preset = forms.ChoiceField(choices=TrainingRun.Preset.choices, initial=TrainingRun.Preset.RLHF)
    base_model = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).order_by("-id"),
        required=False, empty_label="Newest base model (default)",
    )  # fmt: skip
    peft_sft = forms.ChoiceField(label="SFT", choices=StageRun.Peft.choices, initial="full")
    peft_reward = forms.ChoiceField(label="Reward model", choices=StageRun.Peft.choices, initial="full")
    peft_ppo = forms.ChoiceField(label="PPO", choices=StageRun.Peft.choices, initial="lora")
    peft_contrastive = forms.ChoiceField(label="Contrastive", choices=StageRun.Peft.choices, initial="lora")
    max_steps = forms.IntegerField(
        required=False, min_value=1, help_text="Optimizer steps (PPO: iterations)."
    )
    learning_rate = forms.FloatField(required=False, min_value=0)
    batch_size = forms.IntegerField(required=False, min_value=1)
    advanced = forms.CharField(
        label="Advanced (JSON per stage)", required=False, widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text='e.g. {"ppo": {"init_kl_coef": 0.05, "rules": [{"kind": "keyword", "keywords": ["because"]}]}}',
    )  # fmt: skip
    sample_after = forms.BooleanField(
        label="When it succeeds, sample from the new policy", required=False, initial=True,
        help_text="Its answers become new comparisons for the annotators, uncertain pairs first.",
    )  # fmt: skip
    min_agreement = forms.FloatField(required=False, min_value=0, max_value=1)
    exclude_flagged = forms.BooleanField(required=False, initial=True)
    adjudicated_only = forms.BooleanField(required=False)
    gold_qualified_only = forms.BooleanField(required=False)
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean_advanced(self) -> dict:
        raw = self.cleaned_data.get("advanced") or ""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from exc
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise forms.ValidationError('Give an object of stage objects, e.g. {"sft": {"max_steps": 50}}.')
        return value

    def stage_configs(self) -> dict[str, dict]:
        """Key hyperparameters for every stage of the preset, overridden per stage by the advanced JSON."""
        data = self.cleaned_data
        configs: dict[str, dict] = {}
        for kind in PRESET_STAGES[data["preset"]]:
            values = {name: data[name] for name in KEY_HYPERPARAMETERS if data.get(name) is not None}
            values.update(data.get("advanced", {}).get(kind, {}))
            configs[kind] = values
        for kind, values in data.get("advanced", {}).items():
            configs.setdefault(kind, values)  # a stage the preset lacks: the service names the error
        return configs

    def peft_methods(self) -> dict[str, str]:
        """The method of each stage the preset runs (the service refuses methods for stages it does not run)."""
        return {
            kind: self.cleaned_data[f"peft_{kind}"] for kind in PRESET_STAGES[self.cleaned_data["preset"]]
        }

    def filters(self) -> dict:
        data = self.cleaned_data
        values = {
            "min_agreement": data.get("min_agreement"),
            "exclude_flagged": bool(data.get("exclude_flagged")),
            "adjudicated_only": bool(data.get("adjudicated_only")),
            "gold_qualified_only": bool(data.get("gold_qualified_only")),
            "date_from": data["date_from"].isoformat() if data.get("date_from") else None,
            "date_to": data["date_to"].isoformat() if data.get("date_to") else None,
        }
        return {key: value for key, value in values.items() if value is not None}

    def add_service_errors(self, message_dict: dict[str, list[str]]) -> None:
        """Put each service error beside its input: `ppo.peft.method` → peft_ppo, `sft.max_steps` → max_steps…"""
        shown: set[tuple[str | None, str]] = set()
        for key, messages in message_dict.items():
            field = self._field_for(key)
            for message in messages:
                text = message if field != "advanced" else f"{key}: {message}"
                if (field, text) not in shown:  # e.g. one max_steps that every stage of the preset refuses
                    shown.add((field, text))
                    self.add_error(field, text)

    def _field_for(self, key: str) -> str | None:
        kind, _, rest = key.partition(".")
        if key in self.fields:
            return key
        if rest == "peft.method" and f"peft_{kind}" in self.fields:
            return f"peft_{kind}"
        if kind == "peft" and f"peft_{rest}" in self.fields:
            return f"peft_{rest}"
        if kind == "sample_after":
            return "sample_after"
        if rest in KEY_HYPERPARAMETERS and rest not in self.cleaned_data.get("advanced", {}).get(kind, {}):
            return rest
        if key.startswith("filters"):
            return None
        return "advanced"

"""The launch form: preset, PEFT per stage, key hyperparameters, advanced JSON, data filters."""

from __future__ import annotations

import json
import re

from django import forms

from labeling.models import Project
from registry.models import ModelVersion
from training.engine import stages as engine_stages
from training.models import StageRun, TrainingRun
from training.services.runs import PRESET_STAGES, SIZE_CHOICES, SIZE_PRESETS

KEY_HYPERPARAMETERS = ("max_steps", "learning_rate", "batch_size")

STAGE_LABELS = {"sft": "SFT", "reward": "Reward model", "ppo": "PPO", "contrastive": "Contrastive"}
# Config fields in the words of the form; any other field reads as its name with spaces.
FIELD_LABELS = {
    "max_steps": "steps",
    "batch_size": "batch size",
    "mini_batch_size": "mini-batch size",
    "gradient_accumulation_steps": "gradient accumulation steps",
    "max_length": "maximum length in tokens",
    "peft": "PEFT settings",
    "max_new_tokens": "new tokens per answer",
    "ppo_epochs": "epochs per rollout",
    "init_kl_coef": "initial KL coefficient",
    "kl_target": "KL target",
    "kl_horizon": "KL horizon",
    "top_p": "top-p",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target_modules": "LoRA target modules",
    "adapter_bottleneck": "adapter bottleneck size",
    "reward_batch_size": "reward-model batch size",
    "eval_batch_size": "evaluation batch size",
    "cpo_alpha": "CPO alpha",
    "missing_eos_penalty": "missing end-of-text penalty",
    "held_out_fraction": "held-out fraction",
    "checkpoint_every": "checkpoint interval (steps)",
}
IDENTIFIER = re.compile(
    r"(?<![\"'])\b[a-z]+(?:_[a-z]+)+\b(?![\"'])"
)  # a config field's name, not a quoted key


def field_label(name: str) -> str:
    """`ppo_epochs` → "epochs per rollout", `peft.lora_r` → "LoRA rank", `value_clip_range` → "value clip range"."""
    last = name.rsplit(".", 1)[-1]
    return FIELD_LABELS.get(last, last.replace("_", " "))


def human_error(key: str, message: str) -> str:
    """A stage config error in a person's words: ("ppo.mini_batch_size", "mini_batch_size (8) cannot be larger
    than batch_size (4)…") → "PPO mini-batch size (8) cannot be larger than the batch size (4)…"."""
    kind, _, name = key.partition(".")
    stage = STAGE_LABELS.get(kind)
    if stage is None:
        return message
    if not name or name == "__all__":
        return f"{stage}: {message}"
    if message.startswith("unknown field"):
        return f"{stage} has no setting {name!r}{message[len('unknown field') :]}"
    subject, own = f"{stage} {field_label(name)}", name.rsplit(".", 1)[-1]
    if message.startswith(own + " "):
        rest = message[len(own) :]
    elif message.startswith(("must ", "cannot ", "name ", "not ")):
        rest = " " + message
    else:
        rest = ": " + message
    return subject + IDENTIFIER.sub(lambda m: _mentioned(kind, m.group(0)), rest)


def _mentioned(kind: str, identifier: str) -> str:
    return f"the {field_label(identifier)}" if identifier in _config_fields(kind) else identifier


def _config_fields(kind: str) -> set[str]:
    try:
        return set(engine_stages.config_defaults(kind)) | set(engine_stages.config_defaults(kind)["peft"])
    except Exception:  # an unknown kind: nothing to translate
        return set()


class LaunchForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"), to_field_name="slug")
    preset = forms.ChoiceField(choices=TrainingRun.Preset.choices, initial=TrainingRun.Preset.RLHF)
    base_model = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).order_by("-id"),
        required=False,
        empty_label="Newest base model (default)",
    )
    size = forms.ChoiceField(
        choices=SIZE_CHOICES,
        initial="default",
        required=False,
        help_text="Where the stages' settings start from; the fields below and the advanced JSON override them.",
    )
    peft_sft = forms.ChoiceField(label="SFT", choices=StageRun.Peft.choices, initial="full")
    peft_reward = forms.ChoiceField(label="Reward model", choices=StageRun.Peft.choices, initial="full")
    peft_ppo = forms.ChoiceField(label="PPO", choices=StageRun.Peft.choices, initial="lora")
    peft_contrastive = forms.ChoiceField(label="Contrastive", choices=StageRun.Peft.choices, initial="lora")
    max_steps = forms.IntegerField(
        label="Steps", required=False, min_value=1, help_text="Optimizer steps (PPO: iterations)."
    )
    learning_rate = forms.FloatField(label="Learning rate", required=False, min_value=0)
    batch_size = forms.IntegerField(
        label="Batch size",
        required=False,
        min_value=1,
        help_text="PPO: prompts per rollout; its mini-batch follows unless the advanced JSON sets one.",
    )
    advanced = forms.CharField(
        label="Advanced (JSON per stage)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text='e.g. {"ppo": {"init_kl_coef": 0.05, "rules": [{"kind": "keyword", "keywords": ["because"]}]}}',
    )
    sample_after = forms.BooleanField(
        label="When it succeeds, sample from the new policy",
        required=False,
        initial=True,
        help_text="Its answers become new comparisons for the annotators, uncertain pairs first.",
    )
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
        size = SIZE_PRESETS.get(data.get("size") or "default", {})
        for kind in PRESET_STAGES[data["preset"]]:
            values = dict(size.get(kind, {}))
            values.update({name: data[name] for name in KEY_HYPERPARAMETERS if data.get(name) is not None})
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
        """Put each service error beside its input, in words: `ppo.peft.method` → peft_ppo, `sft.max_steps` →
        max_steps, a rule between two values beside the one set on the form, the rest beside the advanced JSON
        (with its JSON key, to find it there)."""
        shown: set[tuple[str | None, str]] = set()
        for key, messages in message_dict.items():
            for message in messages:
                field = self._field_for(key, message)
                mentions = set(IDENTIFIER.findall(message)) - {key.rsplit(".", 1)[-1]}
                if field == "advanced":
                    text = f"{human_error(key, message)} ({key})"
                elif field in KEY_HYPERPARAMETERS and mentions:
                    text = human_error(key, message)
                else:
                    text = message  # e.g. "must be at least 1" beside its own input
                if (field, text) not in shown:  # e.g. one max_steps that every stage of the preset refuses
                    shown.add((field, text))
                    self.add_error(field, text)

    def error_summary(self) -> list[tuple[str | None, str, str]]:
        """(anchor of the field or None, its label, message) for every error, in the order of the form."""
        items = [(None, "", str(error)) for error in self.non_field_errors()]
        for name in self.fields:
            items.extend(
                (f"field-{name}", str(self[name].label), str(error)) for error in self.errors.get(name, [])
            )
        return items

    def _field_for(self, key: str, message: str = "") -> str | None:
        kind, _, rest = key.partition(".")
        if key in self.fields:
            return key
        if rest == "peft.method" and f"peft_{kind}" in self.fields:
            return f"peft_{kind}"
        if kind == "peft" and f"peft_{rest}" in self.fields:
            return f"peft_{rest}"
        if kind == "sample_after":
            return "sample_after"
        from_form = [
            name
            for name in KEY_HYPERPARAMETERS
            if self.cleaned_data.get(name) is not None
            and name not in self.cleaned_data.get("advanced", {}).get(kind, {})
        ]
        if rest in KEY_HYPERPARAMETERS and rest not in self.cleaned_data.get("advanced", {}).get(kind, {}):
            return rest
        if not message.startswith("unknown field"):
            for name in IDENTIFIER.findall(message):  # a rule between this value and one set on the form
                if name in from_form:
                    return name
        if key.startswith("filters"):
            return None
        return "advanced"

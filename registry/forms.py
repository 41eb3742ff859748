"""The "Add a base model" form of /models/ (admins): where the model folder is, its name, a chat template."""

from __future__ import annotations

from django import forms

from registry.services import CHAT_TEMPLATE_MAX_CHARS, model_import_roots


class BaseModelImportForm(forms.Form):
    path = forms.CharField(
        label="Model folder",
        max_length=1000,
        widget=forms.TextInput(attrs={"placeholder": "/shared/artifacts/incoming/my-model", "size": 60}),
    )
    name = forms.CharField(
        label="Name", max_length=200, required=False, help_text="In the registry; empty: the folder's name."
    )
    chat_template = forms.CharField(
        label="Chat template",
        required=False,
        max_length=CHAT_TEMPLATE_MAX_CHARS,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="Only for a tokenizer without one: a Jinja template, as in tokenizer_config.json.",
    )
    chat_template_file = forms.FileField(
        label="…or a chat template file", required=False, help_text="A .jinja or text file."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        roots = ", ".join(str(root) for root in model_import_roots())
        self.fields[
            "path"
        ].help_text = f"A Hugging Face folder (config.json, *.safetensors, tokenizer) on the shared volume, inside {roots}."

    def clean(self):
        data = super().clean()
        upload = data.get("chat_template_file")
        if upload is not None:
            if data.get("chat_template"):
                raise forms.ValidationError("Give the chat template as text or as a file, not both.")
            if upload.size > CHAT_TEMPLATE_MAX_CHARS * 4:
                self.add_error("chat_template_file", "The file is too large for a chat template.")
                return data
            try:
                data["chat_template"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                self.add_error("chat_template_file", "The chat template file is not UTF-8 text.")
        return data

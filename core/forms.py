"""What every app's pages do with a form: a service's ValidationError shown beside the inputs it names."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError


def form_add_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Each message beside its field when the form has one, else at the top (a service checks more than a form)."""
    for name, messages in error.message_dict.items():
        form.add_error(name if name in form.fields else None, messages)

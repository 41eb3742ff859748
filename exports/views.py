"""The exports page for researchers and admins: choose, preview, launch, watch (htmx polling), download, history.

Thin: the export services and selectors do the work, the same ones the REST API and `manage.py
export_preferences` use. Downloads: a JSONL or Parquet file and, beside it, its dataset card; a Hugging Face
dataset as a tar of one folder holding the `save_to_disk` files and README.md, the layout the CLI writes, so
`datasets.load_from_disk` opens the folder it unpacks to.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.forms import form_add_service_errors
from core.jobs import BrokerUnavailable
from core.permissions import role_required
from core.roles import Role
from exports import preview as previews
from exports.downloads import download_name, download_response
from exports.filters import PreferenceFilters
from exports.forms import ExportForm
from exports.models import Export
from exports.services import (
    export_cancel,
    export_create,
    export_file_path,
    export_retry,
)
from labeling.selectors.annotation import sole_project_slug

reader_required = role_required(Role.RESEARCHER, Role.ADMIN)

ACTIVE = (Export.Status.QUEUED, Export.Status.RUNNING)
RETRYABLE = (Export.Status.FAILED, Export.Status.CANCELLED)
SHOWN_CHARS = 300  # longer texts are shortened in the preview (the file holds them whole)


def _shortened(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return value[:SHOWN_CHARS] + "…"
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    return value


def _filters_sentence(export: Export) -> str:
    try:
        return PreferenceFilters.from_dict(export.filters).sentence()
    except (ValidationError, TypeError, ValueError):  # stored by an older version: show them as stored
        return json.dumps(export.filters, sort_keys=True)


def _row(export: Export, *, notice: str = "", notice_error: bool = False) -> dict:
    """What one export's entry shows and offers (cancel while it may still stop, retry once it stopped)."""
    done = export.status == Export.Status.SUCCEEDED
    name = download_name(export)
    return {
        "export": export,
        "active": export.status in ACTIVE,
        "done": done,
        "failed": export.status == Export.Status.FAILED,
        "cancellable": export.status in ACTIVE,
        "retryable": export.status in RETRYABLE,
        # A queued export whose task never reached the broker (an outage): offer to send it now.
        "resendable": export.status == Export.Status.QUEUED and export.enqueued_at is None,
        "percent": round(100 * export.progress),
        "sentence": _filters_sentence(export),
        "name": name,
        "suffix": {"jsonl": ".jsonl", "parquet": ".parquet"}.get(export.file_type, ""),
        "is_hf": export.file_type == Export.FileType.HF,
        "notice": notice,
        "notice_error": notice_error,
    }


@reader_required
@require_http_methods(["GET", "POST"])
def exports_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ExportForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                export = export_create(
                    project=data["project"],
                    format=data["format"],
                    file_type=data["file_type"],
                    filters=form.preference_filters,
                    created_by=request.user,
                )
            except ValidationError as exc:
                form_add_service_errors(form, exc)
            except BrokerUnavailable as exc:  # saved; it starts once the broker is back
                messages.warning(request, str(exc))
                return _back_to_page(data["project"].slug, exc.pk)
            else:
                messages.success(request, f"Export #{export.pk} is queued: its progress shows below.")
                return _back_to_page(data["project"].slug, export.pk)
    else:
        form = ExportForm(initial={"project": request.GET.get("project") or sole_project_slug()})
    context = {"form": form, "rows": [_row(export) for export in previews.exports_recent()]}
    return render(request, "exports/page.html", context, status=422 if form.errors else 200)


def _back_to_page(project_slug: str, export_id: int) -> HttpResponse:
    return redirect(f"{reverse('exports:page')}?project={project_slug}#export-{export_id}")


@reader_required
@require_GET
def export_preview(request: HttpRequest) -> HttpResponse:
    """Row count and first rows of the export the form describes (htmx partial, refreshed on every change)."""
    form = ExportForm(request.GET)
    context: dict[str, Any] = {"form": form, "count_limit": previews.COUNT_LIMIT}
    if form.is_valid():
        data = form.cleaned_data
        preview = previews.export_preview(
            project=data["project"],
            format=data["format"],
            filters=form.preference_filters,
            count_limit=previews.COUNT_LIMIT,
        )
        context.update(
            preview=preview,
            sentence=form.preference_filters.sentence(),
            sample=[json.dumps(_shortened(row), indent=2, ensure_ascii=False) for row in preview.rows],
        )
    return render(request, "exports/partials/preview.html", context)


def _get_export(export_id: int) -> Export:
    return get_object_or_404(Export.objects.select_related("project", "created_by"), pk=export_id)


@reader_required
@require_GET
def export_row(request: HttpRequest, export_id: int) -> HttpResponse:
    """One export's entry, polled by htmx while it is queued or running."""
    return render(request, "exports/partials/row.html", {"row": _row(_get_export(export_id))})


@reader_required
@require_POST
def export_action(request: HttpRequest, export_id: int, action: str) -> HttpResponse:
    """Cancel or retry through the export services; the entry comes back with what happened."""
    run = {"cancel": export_cancel, "retry": export_retry}.get(action)
    if run is None:
        raise Http404
    export = _get_export(export_id)
    notice, is_error = "", False
    try:
        export = run(export=export)
    except ValidationError as exc:
        notice, is_error = " ".join(exc.messages), True
    except BrokerUnavailable as exc:
        notice = str(exc)
    else:
        notice = (
            "Cancelled: no file is kept."
            if action == "cancel"
            else "Queued again: it starts from the beginning."
        )
    if not request.htmx:
        (messages.error if is_error else messages.info)(request, f"Export #{export.pk}: {notice}")
        return _back_to_page(export.project.slug, export.pk)
    export.refresh_from_db()
    row = _row(export, notice=notice, notice_error=is_error)
    return render(request, "exports/partials/row.html", {"row": row})


def _finished_path(export: Export):
    try:
        return export_file_path(export=export)
    except ValidationError as exc:
        raise Http404(" ".join(exc.messages)) from None


@reader_required
@require_GET
def export_download(request: HttpRequest, export_id: int) -> HttpResponse:
    """The data file, or for a Hugging Face dataset a tar of one folder: its files and its README.md card."""
    export = _get_export(export_id)
    return download_response(export, _finished_path(export))


@reader_required
@require_GET
def export_card(request: HttpRequest, export_id: int) -> FileResponse:
    """The dataset card (README.md) of a JSONL or Parquet export, named to lie beside the file as the CLI's does."""
    export = _get_export(export_id)
    path = _finished_path(export)
    card = path.parent / "README.md"
    if not card.is_file():
        raise Http404("The export has no dataset card.")
    filename = f"{download_name(export)}{path.suffix}.README.md" if path.is_file() else "README.md"
    return FileResponse(open(card, "rb"), as_attachment=True, filename=filename, content_type="text/markdown")

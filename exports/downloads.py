"""One way to hand a finished export to a person, for the exports page and the REST API alike."""

from __future__ import annotations

from pathlib import Path

from django.http import FileResponse, StreamingHttpResponse

from exports.models import Export
from exports.services import iter_directory_tar


def download_name(export: Export) -> str:
    return f"{export.project.slug}-{export.format}-{export.pk}"


def download_response(export: Export, path: Path) -> FileResponse | StreamingHttpResponse:
    """The data file (JSONL or Parquet), or for a Hugging Face dataset a tar of one folder holding its files and its
    README.md card: `datasets.load_from_disk` opens the folder it unpacks to, the layout `export_preferences` writes."""
    name = download_name(export)
    if not path.is_dir():
        return FileResponse(open(path, "rb"), as_attachment=True, filename=f"{name}{path.suffix}")
    card = path.parent / "README.md"
    extra = {"README.md": card} if card.is_file() else {}
    response = StreamingHttpResponse(
        iter_directory_tar(path, arcname=name, extra_files=extra), content_type="application/x-tar"
    )
    response["Content-Disposition"] = f'attachment; filename="{name}.tar"'
    return response

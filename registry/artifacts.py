"""Every path under ARTIFACT_ROOT, built here and nowhere else (web and workers share the folder):

    models/<name>/                                   imported base models (`manage.py import_base_model`)
    runs/<run id>/stage-<position>-<kind>/           what a training stage wrote (a model version's artifact),
                                                     its checkpoints beside it (`<folder>.checkpoints`, the engine's)
    datasets/<sha256>/<format>.jsonl                 frozen training snapshots, one file per data format
    exports/<project>/<stamp>-<id>-<format>/         preference exports: the data and its dataset card
    imports/<job id>-<token>.<format>                uploads kept until their import job has finished

Rows store paths relative to the root (`relative_to_root`), so the root can move; `artifact_path` turns a stored
path back into a file. A stored path read back for serving is checked with `resolve_inside_root`: `..` or a
symbolic link cannot lead out of the folder.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from django.conf import settings

from registry.models import ModelVersion
from training.engine.common import ModelRef


def artifact_root() -> Path:
    return Path(settings.ARTIFACT_ROOT)


def artifact_path(relative: str) -> Path:
    """The file or folder of a path as rows store it (relative to ARTIFACT_ROOT)."""
    return artifact_root() / relative


def relative_to_root(path: Path) -> str:
    """The path as rows store it. ValueError when it does not lie under ARTIFACT_ROOT."""
    return str(Path(path).resolve().relative_to(artifact_root().resolve()))


def resolve_inside(folder: Path, relative: str) -> Path | None:
    """`folder / relative` with links and `..` resolved, or None when that leads out of `folder`."""
    folder = Path(folder).resolve()
    path = (folder / relative).resolve()
    return path if folder in path.parents else None


def resolve_inside_root(relative: str) -> Path | None:
    """A stored path, resolved, or None when it leads out of ARTIFACT_ROOT (whether or not it exists)."""
    return resolve_inside(artifact_root(), relative)


def base_model_folder(name: str) -> Path:
    return artifact_root() / "models" / name


def stage_folder(*, run_id: int, position: int, kind: str) -> Path:
    return artifact_root() / "runs" / str(run_id) / f"stage-{position}-{kind}"


def datasets_folder() -> Path:
    return artifact_root() / "datasets"


def dataset_folder(content_hash: str) -> Path:
    return datasets_folder() / content_hash


def export_folder(*, project_slug: str, created_at: datetime, export_id: int, data_format: str) -> Path:
    return (
        artifact_root() / "exports" / project_slug / f"{created_at:%Y%m%dT%H%M%S}-{export_id}-{data_format}"
    )


def import_upload_file(*, job_id: int, token: str, file_format: str) -> Path:
    return artifact_root() / "imports" / f"{job_id}-{token}.{file_format}"


def model_version_folder(version: ModelVersion) -> Path:
    return artifact_path(version.artifact_path)


def model_version_ref(version: ModelVersion) -> ModelRef:
    """What the engine loads a registered model from."""
    return ModelRef(path=model_version_folder(version), name=version.name)

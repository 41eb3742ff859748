"""registry/artifacts.py: every path under ARTIFACT_ROOT, stored relative to it, never leading out of it."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from exports.services import export_create, export_relative_dir
from registry.artifacts import (
    artifact_path,
    export_folder,
    import_upload_file,
    relative_to_root,
    resolve_inside,
    resolve_inside_root,
    stage_folder,
)
from tests.labeling.factories import make_project, make_user

pytestmark = pytest.mark.django_db


def test_stored_paths_are_relative_to_the_root_and_come_back_as_files():
    folder = stage_folder(run_id=7, position=1, kind="reward")
    assert relative_to_root(folder) == "runs/7/stage-1-reward"
    assert artifact_path(relative_to_root(folder)) == settings.ARTIFACT_ROOT / "runs/7/stage-1-reward"
    assert (
        relative_to_root(import_upload_file(job_id=3, token="ab12", file_format="csv"))
        == "imports/3-ab12.csv"
    )
    with pytest.raises(ValueError):
        relative_to_root(settings.ARTIFACT_ROOT.parent / "elsewhere")


def test_the_export_folder_is_the_one_exports_write_to():
    project = make_project("art")
    export = export_create(
        project=project,
        format="kto",
        file_type="jsonl",
        created_by=make_user("art-res", "researcher"),
        enqueue=False,
    )
    folder = export_folder(
        project_slug=project.slug,
        created_at=export.created_at,
        export_id=export.pk,
        data_format=export.format,
    )
    assert relative_to_root(folder) == export_relative_dir(export)


def test_a_stored_path_cannot_lead_out_of_the_root(tmp_path):
    root = settings.ARTIFACT_ROOT
    (root / "models" / "m").mkdir(parents=True)
    assert resolve_inside_root("models/m") == (root / "models" / "m").resolve()
    assert resolve_inside_root("../outside") is None
    assert resolve_inside_root("/etc/passwd") is None
    assert resolve_inside_root(".") is None  # the root itself is no artifact
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, root / "models" / "link")
    assert resolve_inside_root("models/link") is None  # a link out counts as out
    assert (
        resolve_inside(root / "models" / "m", "weights.bin")
        == (root / "models" / "m" / "weights.bin").resolve()
    )
    assert resolve_inside(root / "models" / "m", "../../x") is None

"""'Add a base model' on /models/: admins name a folder on the shared volume; a `default`-queue task checks and copies
it as `import_base_model --from` does, with progress; a refused folder registers nothing; others get 403."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from registry import services as registry_services
from registry.jobs import BASE_MODEL_IMPORT_JOB
from registry.models import BaseModelImport, ModelVersion
from registry.services import base_model_import_job_run
from tests.model_zoo import build_tiny_model_folder
from tests.training.factories import make_user
from training.engine import model_import
from training.engine.base_model import load_bundled_tokenizer, sha256_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent_imports(monkeypatch) -> list[int]:
    """The import jobs core.jobs would have published to the `default` queue (after the commit)."""
    sent: list[int] = []

    def record(*, kind, pk, quiet=False):
        assert (kind.name, kind.queue, kind.task) == (
            "base model import",
            "default",
            "registry.base_model_import",
        )
        sent.append(pk)

    monkeypatch.setattr(registry_services, "job_send", record)
    return sent


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(make_user("boss", "admin"))
    return client


def _incoming(name: str) -> Path:
    """Where an operator copies a model folder: on the shared volume (ARTIFACT_ROOT, the default import root)."""
    return Path(settings.ARTIFACT_ROOT) / "incoming" / name


def _submit(client, django_capture_on_commit_callbacks, **data):
    with django_capture_on_commit_callbacks(execute=True):
        return client.post(reverse("training:model_import"), data)


def _models_folder_entries() -> list[Path]:
    folder = Path(settings.ARTIFACT_ROOT) / "models"
    return list(folder.iterdir()) if folder.exists() else []


def test_an_admin_adds_a_model_from_the_registry_page_and_follows_the_job(
    admin_client, sent_imports, django_capture_on_commit_callbacks
):
    listing = admin_client.get(reverse("training:models")).content.decode()
    assert reverse("training:model_import") in listing and "Add a base model" in listing
    source = build_tiny_model_folder(_incoming("qwen"), "qwen2")

    response = _submit(admin_client, django_capture_on_commit_callbacks, path=str(source), name="Our Qwen")
    job = BaseModelImport.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "training:model_import_job", args=[job.pk]
    )
    assert sent_imports == [job.pk] and job.status == "queued" and job.source_path == str(source.resolve())
    waiting = admin_client.get(response["Location"], HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 1s"' in waiting and "Queued" in waiting

    job = base_model_import_job_run(job_id=job.pk, task_id="task-1")
    assert job.status == "succeeded", job.error
    version = ModelVersion.objects.get()
    assert job.model_version == version and version.name == "Our Qwen"
    assert version.facts["architecture"] == "Qwen2ForCausalLM" and version.facts["license"] == ""
    weights = source / "model.safetensors"
    assert job.bytes_total == job.bytes_copied == weights.stat().st_size and job.progress == 1.0
    assert version.sha256 == sha256_file(
        Path(settings.ARTIFACT_ROOT) / version.artifact_path / "model.safetensors"
    )

    done = admin_client.get(reverse("training:model_import_job", args=[job.pk]), HTTP_HX_REQUEST="true")
    body = done.content.decode()
    assert reverse("training:model", args=[version.pk]) in body and "hx-trigger" not in body
    # A second message for the same job (a duplicate delivery) imports nothing twice.
    assert base_model_import_job_run(job_id=job.pk, task_id="task-2").status == "succeeded"
    assert ModelVersion.objects.count() == 1 and len(_models_folder_entries()) == 1


def test_a_chat_template_file_is_used_for_a_tokenizer_without_one(
    admin_client, sent_imports, django_capture_on_commit_callbacks
):
    source = build_tiny_model_folder(_incoming("plain"), "mistral", chat_template=False)
    template = SimpleUploadedFile("chat.jinja", load_bundled_tokenizer().chat_template.encode())
    response = _submit(
        admin_client, django_capture_on_commit_callbacks, path=str(source), chat_template_file=template
    )
    assert response.status_code == 302
    job = base_model_import_job_run(job_id=sent_imports[0])
    assert job.status == "succeeded", job.error
    assert job.model_version.facts["chat_template_from"] == "file" and job.model_version.name == "plain"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("{outside}", "is outside the folders models can be imported from"),
        ("{root}/incoming/../../elsewhere", "is outside the folders models can be imported from"),
        ("{root}/incoming/link-out", "is outside the folders models can be imported from"),
        ("{root}/incoming/missing", "There is no folder at"),
        ("", "This field is required"),
    ],
)
def test_a_path_outside_the_import_roots_is_refused_in_the_form(
    admin_client, sent_imports, django_capture_on_commit_callbacks, tmp_path, path, message
):
    outside = build_tiny_model_folder(tmp_path / "elsewhere", "llama")
    (Path(settings.ARTIFACT_ROOT) / "incoming").mkdir(parents=True)
    os.symlink(outside, Path(settings.ARTIFACT_ROOT) / "incoming" / "link-out")
    named = path.format(outside=outside, root=settings.ARTIFACT_ROOT)
    response = _submit(admin_client, django_capture_on_commit_callbacks, path=named)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert not BaseModelImport.objects.exists() and sent_imports == []


def test_a_link_inside_the_folder_to_a_file_elsewhere_is_refused(
    admin_client, sent_imports, django_capture_on_commit_callbacks, tmp_path
):
    outside = build_tiny_model_folder(tmp_path / "elsewhere", "llama")
    source = build_tiny_model_folder(_incoming("sneaky"), "llama")
    (source / "model.safetensors").unlink()
    os.symlink(outside / "model.safetensors", source / "model.safetensors")
    response = _submit(admin_client, django_capture_on_commit_callbacks, path=str(source))
    assert response.status_code == 422 and "model.safetensors in" in response.content.decode()


def test_import_roots_come_from_the_setting(
    settings, admin_client, sent_imports, django_capture_on_commit_callbacks, tmp_path
):
    settings.MODEL_IMPORT_ROOTS = [tmp_path / "volume"]
    source = build_tiny_model_folder(tmp_path / "volume" / "gemma", "gemma")
    assert _submit(admin_client, django_capture_on_commit_callbacks, path=str(source)).status_code == 302
    inside_artifacts = build_tiny_model_folder(_incoming("llama"), "llama")
    refused = _submit(admin_client, django_capture_on_commit_callbacks, path=str(inside_artifacts))
    assert refused.status_code == 422 and str(tmp_path / "volume") in refused.content.decode()
    assert len(sent_imports) == 1


def test_a_refused_model_fails_the_job_with_the_checks_message_and_registers_nothing(
    admin_client, sent_imports, django_capture_on_commit_callbacks
):
    cut = build_tiny_model_folder(_incoming("cut"), "llama")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    no_template = build_tiny_model_folder(_incoming("no-template"), "mistral", chat_template=False)
    for folder in (cut, no_template):
        assert _submit(admin_client, django_capture_on_commit_callbacks, path=str(folder)).status_code == 302
    jobs = [base_model_import_job_run(job_id=pk) for pk in sent_imports]
    assert [job.status for job in jobs] == ["failed", "failed"]
    assert "incomplete or damaged" in jobs[0].error and "no chat template" in jobs[1].error
    page = admin_client.get(reverse("training:model_import_job", args=[jobs[1].pk])).content.decode()
    assert "Nothing was registered." in page and "no chat template" in page
    assert not ModelVersion.objects.exists() and _models_folder_entries() == []


def test_a_copy_that_fails_half_way_leaves_no_folder_and_no_model(
    admin_client, sent_imports, django_capture_on_commit_callbacks, monkeypatch
):
    source = build_tiny_model_folder(_incoming("sharded"), "qwen2", max_shard_size="2MB")
    monkeypatch.setattr(model_import, "COPY_CHUNK_BYTES", 256 * 1024)
    assert _submit(admin_client, django_capture_on_commit_callbacks, path=str(source)).status_code == 302
    real_update = registry_services._CopyProgress.__call__
    written: list[int] = []

    def disk_full_at_half(self, copied, total):
        real_update(self, copied, total)
        written.append(copied)
        if copied > total // 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_services._CopyProgress, "__call__", disk_full_at_half)
    job = base_model_import_job_run(job_id=sent_imports[0])
    assert job.status == "failed" and "No space left on device" in job.error
    assert 0 < job.bytes_copied < job.bytes_total  # the progress the page showed before it failed
    assert len(written) > 2
    assert not ModelVersion.objects.exists() and _models_folder_entries() == []


def test_progress_is_written_at_most_once_a_second(monkeypatch):
    clock = iter([0.0, 0.2, 0.5, 1.1, 1.3, 2.5, 2.6])
    monkeypatch.setattr(registry_services.time, "monotonic", lambda: next(clock))
    writes = []

    class Rows:
        def update(self, **values):
            writes.append(values["bytes_copied"])

    progress = registry_services._CopyProgress(Rows())
    for copied in (10, 20, 30, 40, 50, 60, 100):
        progress(copied, 100)
    assert writes == [10, 40, 60, 100]  # the first, one a second, and always the last


def test_a_taken_name_is_refused_before_a_job_is_queued(
    admin_client, sent_imports, django_capture_on_commit_callbacks
):
    ModelVersion.objects.create(name="qwen", artifact_path="models/qwen", sha256="0" * 64)
    source = build_tiny_model_folder(_incoming("qwen"), "qwen2")
    response = _submit(admin_client, django_capture_on_commit_callbacks, path=str(source))
    assert response.status_code == 422 and "registered already" in response.content.decode()
    assert not BaseModelImport.objects.exists()


@pytest.mark.parametrize("role", ["annotator", "researcher"])
def test_only_admins_see_and_use_the_page(role, sent_imports, django_capture_on_commit_callbacks):
    source = build_tiny_model_folder(_incoming("m"), "llama")
    job = BaseModelImport.objects.create(source_path=str(source))
    client = Client()
    client.force_login(make_user(f"someone-{role}", role))
    if role == "researcher":  # researchers read the registry, without the button
        assert "Add a base model" not in client.get(reverse("training:models")).content.decode()
    assert client.get(reverse("training:model_import")).status_code == 403
    assert _submit(client, django_capture_on_commit_callbacks, path=str(source)).status_code == 403
    assert client.get(reverse("training:model_import_job", args=[job.pk])).status_code == 403
    assert BaseModelImport.objects.count() == 1 and sent_imports == []


def test_the_import_job_is_a_job_of_the_shared_enqueue_path():
    """Never-published rows are found by the maintenance pass like exports and sampling jobs."""
    job = BaseModelImport.objects.create(source_path="/x")
    assert list(BASE_MODEL_IMPORT_JOB.waiting_rows()) == [job]
    BaseModelImport.objects.filter(pk=job.pk).update(status="running")
    assert not BASE_MODEL_IMPORT_JOB.waiting_rows().exists()


def test_the_api_queues_an_import_and_shows_its_outcome(
    sent_imports, django_capture_on_commit_callbacks, tmp_path
):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(make_user("api-boss", "admin"))
    outside = client.post("/api/v1/model-imports/", {"path": str(tmp_path)}, format="json")
    assert outside.status_code == 400 and "outside the folders" in outside.json()["path"][0]
    source = build_tiny_model_folder(_incoming("api-llama"), "llama")
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(
            "/api/v1/model-imports/", {"path": str(source), "name": "From the API"}, format="json"
        )
    assert created.status_code == 202 and created.json()["status"] == "queued"
    assert sent_imports == [created.json()["id"]]
    base_model_import_job_run(job_id=sent_imports[0])
    shown = client.get(f"/api/v1/model-imports/{sent_imports[0]}/").json()
    version = ModelVersion.objects.get(name="From the API")
    assert (shown["status"], shown["model_version"], shown["progress"]) == ("succeeded", version.pk, 1.0)

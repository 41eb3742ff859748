"""Your own base model: `import_base_model --from` registers any causal LM folder; every stage and sampling use it."""

from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from loop.services.sampling import sampling_job_create
from loop.services.sampling_execution import sampling_job_execute
from registry.models import ModelVersion
from registry.services import base_model_import_folder
from tests.model_zoo import build_tiny_model_folder
from tests.training.factories import TINY_STAGE_CONFIGS, make_user, ranked_project
from training.engine.base_model import load_bundled_tokenizer, load_saved_model, sha256_file
from training.models import StageRun, TrainingRun

pytestmark = pytest.mark.django_db


def _models_folder() -> Path:
    return Path(settings.ARTIFACT_ROOT) / "models"


def test_import_from_a_folder_records_the_model_and_fixes_its_pad_token(tmp_path, capsys):
    source = build_tiny_model_folder(tmp_path / "my-mistral", "mistral", pad_token=False)
    (source / "README.md").write_text("---\nlicense: mit\n---\n")
    call_command("import_base_model", "--from", str(source), "--name", "Our Mistral")
    out = capsys.readouterr().out
    assert "no pad token, using '<|im_end|>'" in out and "Imported model version" in out

    version = ModelVersion.objects.get()
    assert (version.name, version.kind, version.parent) == ("Our Mistral", "policy", None)
    assert version.facts["architecture"] == "MistralForCausalLM"
    assert version.facts["license"] == "mit" and version.facts["context_length"] == 512
    assert version.facts["pad_token_was_missing"] is True
    artifact = Path(settings.ARTIFACT_ROOT) / version.artifact_path
    assert version.sha256 == sha256_file(artifact / "model.safetensors")
    assert version.source == f"imported from {source}"
    _, tokenizer = load_saved_model(artifact)
    assert tokenizer.pad_token == "<|im_end|>"

    client = Client()
    client.force_login(make_user("admin1", "admin"))
    page = client.get(reverse("training:model", args=[version.pk])).content.decode()
    assert "MistralForCausalLM" in page and "mit" in page and "the model had none" in page


def test_a_refused_import_registers_nothing_and_leaves_no_folder(tmp_path):
    source = build_tiny_model_folder(tmp_path / "plain", "mistral", chat_template=False)
    with pytest.raises(CommandError, match="no chat template"):
        call_command("import_base_model", "--from", str(source))
    cut = build_tiny_model_folder(tmp_path / "cut", "llama")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CommandError, match="incomplete or damaged"):
        call_command("import_base_model", "--from", str(cut))
    with pytest.raises(CommandError, match="neither a model folder nor a hub id"):
        call_command("import_base_model", "--from", str(tmp_path / "missing" / "folder"))
    assert ModelVersion.objects.count() == 0
    assert not _models_folder().exists() or list(_models_folder().iterdir()) == []


def test_a_taken_name_is_refused_before_anything_is_copied(tmp_path):
    source = build_tiny_model_folder(tmp_path / "m", "llama")
    call_command("import_base_model", "--from", str(source), "--name", "mine")
    with pytest.raises(CommandError, match="registered already"):
        call_command("import_base_model", "--from", str(source), "--name", "mine")
    assert ModelVersion.objects.count() == 1 and len(list(_models_folder().iterdir())) == 1


def _run(launch, drain_stages, project, base, preset, method) -> TrainingRun:
    stages = {"rlhf": ("sft", "reward", "ppo"), "preference": ("sft", "contrastive")}[preset]
    run = launch(
        project=project,
        preset=preset,
        base_model=base,
        peft={stage: method for stage in stages},
        stage_configs={stage: TINY_STAGE_CONFIGS[stage] for stage in stages},
    )
    drain_stages()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    return run


@pytest.mark.parametrize(
    ("architecture", "method", "chat_template", "pad_token"),
    [("qwen2", "full", True, True), ("mistral", "lora", True, False), ("gemma", "adapter", False, True)],
)
def test_every_stage_and_sampling_work_on_another_architecture(
    tmp_path, launch, drain_stages, architecture, method, chat_template, pad_token
):
    source = build_tiny_model_folder(
        tmp_path / architecture, architecture, chat_template=chat_template, pad_token=pad_token, seed=1
    )
    template = None if chat_template else load_bundled_tokenizer().chat_template
    base = base_model_import_folder(source=str(source), chat_template=template, progress=lambda _: None)
    project = ranked_project(prompts=8)

    rlhf = _run(launch, drain_stages, project, base, "rlhf", method)
    sft, reward, ppo = rlhf.stages.order_by("position")
    assert {sft.status, reward.status, ppo.status} == {StageRun.Status.SUCCEEDED}
    assert ppo.output_model.base == base and ppo.output_model.parent == sft.output_model
    assert reward.output_model.kind == "reward" and "held_out_accuracy" in str(reward.output_model.metrics)
    sft_losses = [point["values"]["loss"] for point in sft.metrics if "loss" in point["values"]]
    assert len(sft_losses) == 3 and all(torch.isfinite(torch.tensor(sft_losses)))

    preference = _run(launch, drain_stages, project, base, "preference", method)
    contrastive = preference.stages.get(kind="contrastive")
    assert contrastive.output_model.parent.produced_by_stage.run == preference

    job = sampling_job_create(
        project=project, model_version=ppo.output_model, params={"max_new_tokens": 4}, enqueue=False
    )
    sampling_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == job.Status.SUCCEEDED, job.error
    assert project.prompts.filter(responses__model_version=ppo.output_model).count() == 8

    # The trained policy's files download from its page (a merged model, or the adapter alone), byte for byte.
    client = Client()
    client.force_login(make_user("admin1", "admin"))
    artifact = Path(settings.ARTIFACT_ROOT) / ppo.output_model.artifact_path
    weights = next(artifact.glob("*.safetensors"))
    assert weights.name == ("adapter.safetensors" if method == "adapter" else "model.safetensors")
    download = client.get(reverse("training:model_file", args=[ppo.output_model.pk, weights.name]))
    assert download.status_code == 200 and b"".join(download.streaming_content) == weights.read_bytes()


def test_an_imported_model_is_offered_and_used_by_the_launch_form_and_the_api(
    tmp_path, tiny_model_dir, enqueued_stages, django_capture_on_commit_callbacks
):
    from rest_framework.test import APIClient

    from tests.training.factories import register_tiny_base

    register_tiny_base(tiny_model_dir)  # the bundled one stays the default; ours must be picked
    ours = base_model_import_folder(
        source=str(build_tiny_model_folder(tmp_path / "qwen", "qwen2")),
        name="Our Qwen",
        progress=lambda _: None,
    )
    mistral = base_model_import_folder(
        source=str(build_tiny_model_folder(tmp_path / "mistral", "mistral")), progress=lambda _: None
    )
    project = ranked_project(prompts=4)
    admin = make_user("launcher", "admin")
    client = Client()
    client.force_login(admin)
    page = client.get(reverse("training:launch")).content.decode()
    assert f'<option value="{ours.pk}">' in page and f'<option value="{mistral.pk}">' in page
    form = {
        "project": project.slug, "preset": "sft", "base_model": str(ours.pk), "peft_sft": "lora",
        "peft_reward": "full", "peft_ppo": "lora", "peft_contrastive": "lora", "max_steps": "2",
    }  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("training:launch"), form)
    assert response.status_code == 302, response.content.decode()[-2000:]
    by_page = TrainingRun.objects.get()
    assert by_page.base_model == ours and enqueued_stages == [by_page.stages.get().pk]

    api = APIClient()
    api.force_authenticate(admin)
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(
            "/api/v1/training-runs/",
            {"project": project.slug, "preset": "sft", "base_model": mistral.pk, "peft": "lora"},
            format="json",
        )
    assert created.status_code == 201, created.json()
    assert TrainingRun.objects.get(pk=created.json()["id"]).base_model == mistral

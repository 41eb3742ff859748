"""The sampling page as an admin meets it: "Use for sampling" leads there with the policy chosen."""

import re

import pytest

from labeling.models import Project
from registry.models import ModelVersion
from tests.training.factories import TINY_STAGE_CONFIGS, make_user, ranked_project
from training.models import StageRun
from training.services import runs as run_services

pytestmark = pytest.mark.django_db


def _selected(html: str, name: str) -> list[str]:
    select = re.search(rf'<select name="{name}".*?</select>', html, re.S).group(0)
    return re.findall(r'<option value="([^"]*)"[^>]*selected', select)


def _policy(name: str, **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name, kind="policy", artifact_path=f"models/{name}", sha256="0" * 64, **fields
    )


def test_use_for_sampling_opens_the_sampling_form_with_that_policy_and_its_project(client):
    project = ranked_project(slug="trained-on", prompts=4)
    Project.objects.create(slug="other", name="other", mode="pairwise", k=2)
    run = run_services.training_run_launch(
        project=project,
        preset="sft",
        base_model=_policy("base"),
        stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]},
    )
    trained = _policy("trained")
    StageRun.objects.filter(run=run).update(output_model=trained)
    # The newest policy is the form's first option: the preselection must not fall back to it.
    _policy("newer")
    client.force_login(make_user("sampler", "admin"))

    response = client.post(f"/models/{trained.pk}/use-for-sampling/")
    assert response.status_code == 302
    assert response.url == f"/loop/sampling/?model_version={trained.pk}&project=trained-on"
    page = client.get(response.url)
    html = page.content.decode()
    assert _selected(html, "model_version") == [str(trained.pk)]
    assert _selected(html, "project") == ["trained-on"]
    assert "now generates the responses annotators rank" in html
    # Without a query the policy used for sampling is still the one chosen; the model page links there too.
    assert _selected(client.get("/loop/sampling/").content.decode(), "model_version") == [str(trained.pk)]
    assert (
        f'href="/loop/sampling/?model_version={trained.pk}&amp;project=trained-on"'
        in client.get(f"/models/{trained.pk}/").content.decode()
    )


def test_a_single_project_is_preselected_and_the_pool_labels_fit(client):
    Project.objects.create(slug="only", name="only", mode="pairwise", k=2)
    _policy("lone")
    client.force_login(make_user("sampler2", "admin"))
    html = client.get("/loop/sampling/").content.decode()
    assert _selected(html, "project") == ["only"]
    pool = re.search(r'<select name="pool".*?</select>', html, re.S).group(0)
    labels = re.findall(r">([^<]+)</option>", pool)
    assert labels and all(len(label) <= 20 for label in labels), labels
    assert "held_out = true" in html  # the long explanation moved to the help text
    # The launch and import forms too.
    assert _selected(client.get("/training/launch/").content.decode(), "project") == ["only"]
    imports = client.get("/labeling/import/").content.decode()
    assert re.search(r'<input type="text" name="project" value="only"', imports), imports
    Project.objects.create(
        slug="second", name="second", mode="pairwise", k=2
    )  # now there is a choice to make
    assert _selected(client.get("/loop/sampling/").content.decode(), "project") == [""]  # "choose one"

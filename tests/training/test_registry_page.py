"""The registry list says what matters per kind and which policy feeds annotators; cut-off samples say so."""

import re

import pytest

from labeling.models import Response
from labeling.services.projects import comparison_get_or_create
from loop.services.sampling import sampling_job_create
from loop.services.sampling_execution import sampling_job_execute
from registry.models import ModelVersion
from tests.exports.factories import vote
from tests.labeling.factories import make_project
from tests.loop.test_loop import reference_project
from tests.training.factories import make_user, register_tiny_base

pytestmark = pytest.mark.django_db


def _row(html: str, version: ModelVersion) -> str:
    return re.search(rf'<tr data-version="{version.pk}">.*?</tr>', html, re.S).group(0)


def test_registry_shows_the_metric_that_matters_per_kind_and_the_sampling_policy(client, tiny_model_dir):
    project = reference_project(slug="reg", prompts=3)
    base = register_tiny_base(tiny_model_dir)
    # Two new tokens from a random tiny model never reach the end of an answer: every sample is cut off.
    job = sampling_job_create(
        project=project, model_version=base, params={"max_new_tokens": 2}, enqueue=False
    )
    sampling_job_execute(job_id=job.pk)
    samples = Response.objects.filter(model_version=base)
    assert samples.count() == 3 and all(r.generation_params["truncated"] for r in samples)
    voter = make_user("reg-voter", "annotator")
    for index, sample in enumerate(samples.order_by("id")):
        reference = sample.prompt.responses.exclude(pk=sample.pk).first()
        comparison, _ = comparison_get_or_create(prompt=sample.prompt, responses=[sample, reference])
        vote(comparison, voter, [1, 2] if index < 2 else [2, 1])  # the policy wins 2 of 3
    ModelVersion.objects.filter(pk=base.pk).update(use_for_sampling=True, metrics={"reward_mean": 2.5e-5})
    reward = ModelVersion.objects.create(
        name="rm", kind="reward", parent=base, base=base, artifact_path="models/rm", sha256="1" * 64,
        metrics={"held_out_accuracy": 0.8125, "held_out_pairs": 16.0, "train_pairs": 144.0, "train_loss": 0.4},
    )  # fmt: skip
    make_project("unused")

    client.force_login(make_user("reg-reader", "researcher"))
    html = client.get("/models/").content.decode()
    assert (
        f'<a href="/models/{base.pk}/">tiny-base</a> (#{base.pk})'
        in html.split('data-testid="sampling-from"')[1]
    )
    policy_row = _row(html, base)
    assert 'data-testid="sampling">used for sampling<' in policy_row
    assert "mean reward <strong>2.5e-5</strong>" in policy_row
    assert "win rate <strong>66.7%</strong> of 3 games" in policy_row
    assert '3 samples, <span class="badge" data-testid="truncated">3 truncated</span>' in policy_row
    reward_row = _row(html, reward)
    assert (
        "held-out accuracy <strong>81.2%</strong>" in reward_row and "160 pairs (16 held out)" in reward_row
    )
    assert "train_loss" not in reward_row and "used for sampling" not in reward_row

    detail = client.get(f"/models/{base.pk}/").content.decode()
    samples_html = detail.split('id="samples"')[1]
    assert samples_html.count('data-testid="truncated"') == 3

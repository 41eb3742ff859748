"""A project with real rankings, made through the same services annotators use."""

from __future__ import annotations

from django.contrib.auth.models import Group

from core.services import user_create_or_update
from labeling.models import Project, Prompt, Response
from labeling.services.leasing import assignment_lease_next
from labeling.services.projects import comparison_get_or_create
from labeling.services.rankings import ranking_submit
from registry.artifacts import base_model_folder
from registry.services import model_version_register
from training.engine.base_model import load_saved_model, save_model_atomically

GOOD = "Sure! The answer is {n}, because {n} is right."
BAD = "no"


def make_user(username: str, role: str):
    Group.objects.get_or_create(name=role)  # transaction=True tests flush the data migration's groups
    user, _ = user_create_or_update(username=username, role=role, password="pw-for-tests-123", validate=False)
    return user


def ranked_project(*, slug: str = "loop", prompts: int = 12, annotators: int = 1) -> Project:
    """`prompts` pairwise comparisons, each ranked by `annotators` people who prefer the helpful answer."""
    project = Project(slug=slug, name=slug, mode="pairwise", k=2, overlap=annotators, gold_ratio=0.0)
    project.full_clean()
    project.save()
    for n in range(prompts):
        prompt = Prompt.objects.create(
            project=project, external_id=f"q{n}", messages=[{"role": "user", "content": f"What is {n} plus 0?"}],
            metadata={"reference": str(n)},
        )  # fmt: skip
        good = Response.objects.create(
            prompt=prompt, external_id=f"g{n}", content=GOOD.format(n=n), source_name="a"
        )
        bad = Response.objects.create(prompt=prompt, external_id=f"b{n}", content=BAD, source_name="b")
        comparison_get_or_create(prompt=prompt, responses=[good, bad])
    for index in range(annotators):
        person = make_user(f"oracle{index}", "annotator")
        while (assignment := assignment_lease_next(project=project, annotator=person)) is not None:
            contents = {r.pk: r.content for r in assignment.comparison.responses.all()}
            ranks = {str(pk): 1 if content != BAD else 2 for pk, content in contents.items()}
            ranking_submit(assignment_id=assignment.pk, annotator=person, ranks=ranks)
    return project


def register_tiny_base(tiny_model_dir):
    """The tiny model as the registry's base policy (copied under ARTIFACT_ROOT like an import would)."""
    model, tokenizer = load_saved_model(tiny_model_dir)
    saved = save_model_atomically(model, tokenizer, base_model_folder("tiny-base"))
    return model_version_register(name="tiny-base", kind="policy", saved=saved, source="tests")


TINY_STAGE_CONFIGS = {
    "sft": {"max_steps": 3, "batch_size": 4, "max_length": 64, "learning_rate": 1e-3, "checkpoint_every": 2},
    "reward": {"max_steps": 3, "batch_size": 4, "max_length": 64, "learning_rate": 1e-3, "checkpoint_every": 2,
               "held_out_fraction": 0.25},
    "ppo": {"max_steps": 2, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 6,
            "max_length": 64, "learning_rate": 1e-4, "checkpoint_every": 1},
    "contrastive": {"max_steps": 3, "batch_size": 4, "max_length": 64, "learning_rate": 1e-4, "checkpoint_every": 2},
}  # fmt: skip

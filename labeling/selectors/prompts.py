"""Prompts as training rows: what a PPO stage or a sampling job generates from."""

from __future__ import annotations

from collections.abc import Iterator

from labeling.models import Project, Prompt


def prompt_rows(*, project: Project) -> Iterator[dict]:
    """One row per prompt of the project, in id order: conversational `prompt`, `domain`, and `reference`
    (from the prompt's metadata, for rule-based rewards that compare against a stored answer)."""
    for prompt in Prompt.objects.filter(project=project).order_by("id").iterator(chunk_size=2000):
        metadata = prompt.metadata or {}
        yield {
            "prompt_id": prompt.pk,
            "prompt": prompt.messages,
            "domain": prompt.domain,
            "reference": str(metadata.get("reference", "")),
        }

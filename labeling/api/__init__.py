"""The labeling app's endpoints under /api/v1/: projects, prompts, responses, comparisons, rankings, imports."""

"""The labeling app's endpoints under /api/v1/ (feedback_app/urls.py combines every app's router)."""

from rest_framework.routers import SimpleRouter

from labeling.api import import_jobs, views

router = SimpleRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("responses", views.ResponseViewSet, basename="response")
router.register("comparisons", views.ComparisonViewSet, basename="comparison")
router.register("rankings", views.RankingViewSet, basename="ranking")
router.register("import-jobs", import_jobs.ImportJobViewSet, basename="import-job")

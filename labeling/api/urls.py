"""/api/v1/ (the REST API), /api/schema/ (OpenAPI 3) and /api/docs/ (Swagger UI, served from local files)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny
from rest_framework.routers import DefaultRouter

from exports.api.urls import router as exports_router
from labeling.api import import_jobs, views

app_name = "api"

router = DefaultRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("responses", views.ResponseViewSet, basename="response")
router.register("comparisons", views.ComparisonViewSet, basename="comparison")
router.register("rankings", views.RankingViewSet, basename="ranking")
router.register("model-versions", views.ModelVersionViewSet, basename="model-version")
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")
# Each app's routes, under /api/v1/ and in the API root's listing.
router.registry.extend(exports_router.registry)
router.register("import-jobs", import_jobs.ImportJobViewSet, basename="import-job")

urlpatterns = [
    path("v1/auth/token/", views.TokenView.as_view(), name="token"),
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/",
        # The split view serves its init script as a file (?script=): the Content-Security-Policy allows no inline JS.
        SpectacularSwaggerSplitView.as_view(url_name="api:schema", permission_classes=[AllowAny]),
        name="docs",
    ),
]

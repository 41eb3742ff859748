"""The exports app's endpoints under /api/v1/ (feedback_app/urls.py combines every app's router)."""

from rest_framework.routers import SimpleRouter

from exports.api.views import ExportViewSet

router = SimpleRouter()
router.register("exports", ExportViewSet, basename="export")

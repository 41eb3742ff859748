"""The exports API's routes; `labeling/api/urls.py` adds them to the one /api/v1/ router (one OpenAPI document)."""

from rest_framework.routers import SimpleRouter

from exports.api.views import ExportViewSet

router = SimpleRouter()
router.register("exports", ExportViewSet, basename="export")

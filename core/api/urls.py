"""The API's own URLs beside the apps' routers (combined in feedback_app/urls.py, namespace `api`): the token
endpoint, /api/schema/ (OpenAPI 3, one document for every app) and /api/docs/ (Swagger UI, served from local files)."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny

from core.api.views import TokenView

urlpatterns = [
    path("v1/auth/token/", TokenView.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/",
        # The split view serves its init script as a file (?script=): the Content-Security-Policy allows no inline JS.
        SpectacularSwaggerSplitView.as_view(url_name="api:schema", permission_classes=[AllowAny]),
        name="docs",
    ),
]

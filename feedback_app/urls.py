from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from core.api import urls as core_api_urls
from exports.api import urls as exports_api_urls
from labeling import views as labeling_views
from labeling.api import urls as labeling_api_urls
from loop.api import urls as loop_api_urls
from registry.api import urls as registry_api_urls
from training.api import urls as training_api_urls

# One REST API, one OpenAPI document: every app's router under /api/v1/, listed by one root view.
api_router = DefaultRouter()
for app_urls in (labeling_api_urls, exports_api_urls, registry_api_urls, training_api_urls, loop_api_urls):
    api_router.registry.extend(app_urls.router.registry)
api_urls = ([path("v1/", include(api_router.urls)), *core_api_urls.urlpatterns], "api")

# The API first: the annotator loop's requests are API requests, and Django tries the patterns in order (listed
# after the pages, each API request tried some 60 page patterns first). No page pattern can match a path under
# api/ (tests/labeling/test_hot_path.py), so the order changes what is tried, never what matches.
urlpatterns = [
    path("api/", include(api_urls)),
    path("", labeling_views.home, name="home"),
    path("", include("core.urls")),
    path("", include("labeling.urls")),
    path("", include("training.urls")),
    path("", include("loop.urls")),
    path("", include("exports.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("django-admin/", admin.site.urls),
]

# API errors are JSON; a lost database connection is a 503 with Retry-After wherever it is raised.
handler404 = "core.request_guard.not_found"
handler500 = "core.outage.server_error"

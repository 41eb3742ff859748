from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("core.urls")),
    path("", include("labeling.urls")),
    path("", include("training.urls")),
    path("", include("loop.urls")),
    path("", include("exports.urls")),
    path("api/", include("labeling.api.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("django-admin/", admin.site.urls),
]

# API errors are JSON; a lost database connection is a 503 with Retry-After wherever it is raised.
handler404 = "core.request_guard.not_found"
handler500 = "core.outage.server_error"

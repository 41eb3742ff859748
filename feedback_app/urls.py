from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("core.urls")),
    path("", include("labeling.urls")),
    path("", include("training.urls")),
    path("", include("loop.urls")),
    path("api/", include("labeling.api.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("django-admin/", admin.site.urls),
]

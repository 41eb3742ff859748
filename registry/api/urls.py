from rest_framework.routers import SimpleRouter

from registry.api import views

router = SimpleRouter()
router.register("model-versions", views.ModelVersionViewSet, basename="model-version")
router.register("model-imports", views.BaseModelImportViewSet, basename="model-import")

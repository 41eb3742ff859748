"""URLs of the exports page (namespace `exports`)."""

from django.urls import path

from exports import views

app_name = "exports"

urlpatterns = [
    path("exports/", views.exports_page, name="page"),
    path("exports/preview/", views.export_preview, name="preview"),
    path("exports/<int:export_id>/row/", views.export_row, name="row"),
    path("exports/<int:export_id>/cancel/", views.export_action, {"action": "cancel"}, name="cancel"),
    path("exports/<int:export_id>/retry/", views.export_action, {"action": "retry"}, name="retry"),
    path("exports/<int:export_id>/download/", views.export_download, name="download"),
    path("exports/<int:export_id>/card/", views.export_card, name="card"),
]

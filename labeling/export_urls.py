"""URLs of the exports page (namespace `exports`)."""

from django.urls import path

from labeling import export_views

app_name = "exports"

urlpatterns = [
    path("exports/", export_views.exports_page, name="page"),
    path("exports/preview/", export_views.export_preview, name="preview"),
    path("exports/<int:export_id>/row/", export_views.export_row, name="row"),
    path("exports/<int:export_id>/cancel/", export_views.export_action, {"action": "cancel"}, name="cancel"),
    path("exports/<int:export_id>/retry/", export_views.export_action, {"action": "retry"}, name="retry"),
    path("exports/<int:export_id>/download/", export_views.export_download, name="download"),
    path("exports/<int:export_id>/card/", export_views.export_card, name="card"),
]

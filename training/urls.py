from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("training/runs/", views.run_list, name="runs"),
    path("training/launch/", views.launch, name="launch"),
    path("training/launch/count/", views.launch_count, name="launch_count"),
    path("training/launch/estimate/", views.launch_estimate, name="launch_estimate"),
    path("training/runs/<int:run_id>/", views.run_detail, name="run"),
    path("training/runs/<int:run_id>/live/", views.run_live, name="run_live"),
    path("training/runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("training/stages/<int:stage_id>/<str:mode>/", views.stage_restart, name="stage_restart"),
    path("models/", views.model_list, name="models"),
    path("models/add/", views.model_import, name="model_import"),
    path("models/imports/<int:job_id>/", views.model_import_job, name="model_import_job"),
    path("models/<int:version_id>/", views.model_detail, name="model"),
    path("models/<int:version_id>/files/<path:filename>", views.model_file_download, name="model_file"),
    path(
        "models/<int:version_id>/use-for-sampling/",
        views.model_use_for_sampling,
        name="model_use_for_sampling",
    ),
]

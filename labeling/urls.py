from django.urls import path

from labeling import views

app_name = "labeling"

urlpatterns = [
    path("projects/", views.project_list, name="projects"),
    path("annotate/<slug:slug>/", views.annotate, name="annotate"),
    path("annotate/<slug:slug>/items/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("annotate/<slug:slug>/items/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("annotate/<slug:slug>/undo/", views.undo, name="undo"),
    path("annotate/<slug:slug>/mine/", views.my_rankings, name="my_rankings"),
    path("annotate/<slug:slug>/mine/<int:ranking_id>/", views.my_ranking_edit, name="my_ranking_edit"),
    path("labeling/import/", views.import_upload, name="import"),
    path("labeling/import/jobs/<int:job_id>/", views.import_job, name="import_job"),
    path("projects/<slug:slug>/dashboard/", views.dashboard, name="dashboard"),
    path("projects/<slug:slug>/review/", views.review, name="review"),
    path("projects/<slug:slug>/review/<int:comparison_id>/", views.adjudicate, name="adjudicate"),
]

from django.urls import path

from loop import views

app_name = "loop"

urlpatterns = [
    path("loop/sampling/", views.sampling, name="sampling"),
    path("loop/sampling/jobs/", views.sampling_jobs, name="sampling_jobs"),
    path("leaderboard/", views.leaderboard_index, name="leaderboard_index"),
    path("leaderboard/<slug:slug>/", views.leaderboard_page, name="leaderboard"),
]

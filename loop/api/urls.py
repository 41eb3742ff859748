from rest_framework.routers import SimpleRouter

from loop.api import views

router = SimpleRouter()
router.register("sampling-jobs", views.SamplingJobViewSet, basename="sampling-job")
router.register("leaderboard", views.LeaderboardViewSet, basename="leaderboard")

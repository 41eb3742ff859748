import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
application = get_wsgi_application()

# Every web process also runs the job maintenance pass on a timer (dead training workers, undelivered jobs), so it
# works with no Celery beat and whichever workers are alive (core.jobs.maintenance_start).
from core.jobs import maintenance_start  # noqa: E402  (needs the apps loaded above)

maintenance_start()

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
application = get_asgi_application()

from core.jobs import maintenance_start  # noqa: E402  (as in wsgi.py: the job maintenance pass on a timer)

maintenance_start()

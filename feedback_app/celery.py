"""The Celery app: `default` queue for generation/export, `gpu` queue for training stages."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")

app = Celery("feedback_app")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"))
app.autodiscover_tasks()


@worker_ready.connect
def start_job_maintenance(**_kwargs) -> None:
    """Every worker runs the job maintenance pass on a timer, whatever queues it consumes (core.jobs)."""
    # Imported when the worker is ready, not at the top: this module loads with the settings package, before
    # Django's app registry, and core.jobs needs the job models.
    from core.jobs import maintenance_start

    maintenance_start()


def ensure_filesystem_broker_folders() -> None:
    """The file-system transport expects its folders to exist; create them before anyone publishes."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)


if str(app.conf.broker_url).startswith("filesystem://"):
    ensure_filesystem_broker_folders()

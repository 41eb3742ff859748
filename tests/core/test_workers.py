"""A real Celery worker process consumes our tasks from Redis and from the zero-setup file-system broker."""

import os

import pytest
from kombu import Connection

from core.models import WorkerHeartbeat
from core.tasks import ping
from tests.workers import celery_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _publish_ping(*, broker_url: str, transport_options: dict, queue: str) -> None:
    # Publish through an explicit connection so the test process uses the same broker as the worker it started.
    with Connection(broker_url, transport_options=transport_options) as connection:
        ping.apply_async(queue=queue, connection=connection)


def _heartbeat(hostname: str, queue: str):
    return WorkerHeartbeat.objects.filter(hostname=hostname, queue=queue).first()


@pytest.mark.redis
def test_worker_consumes_ping_from_redis_on_both_queues():
    broker_url = os.environ.get("REDIS_TEST_URL")
    if not broker_url:
        pytest.skip("REDIS_TEST_URL is not set; `make test` starts Redis and sets it")
    with celery_worker(broker_url=broker_url) as (hostname, _process):
        for queue in ("default", "gpu"):
            _publish_ping(broker_url=broker_url, transport_options={}, queue=queue)
            beat = wait_until(lambda q=queue: _heartbeat(hostname, q), message=f"ping on {queue}")
            assert beat.device.startswith(("cpu", "cuda"))
            # What launch plans a round's memory with: this machine's RAM (a CPU worker) or one GPU's memory.
            assert beat.device_count >= 1 and beat.device_memory_bytes > 2**30


def test_worker_consumes_ping_from_filesystem_broker(tmp_path):
    folder = tmp_path / "broker"
    transport_options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }
    for key in ("data_folder_in", "control_folder"):
        os.makedirs(transport_options[key], exist_ok=True)
    extra_env = {"CELERY_FILESYSTEM_BROKER_DIR": str(folder)}
    with celery_worker(broker_url="filesystem://", extra_env=extra_env) as (hostname, _process):
        _publish_ping(broker_url="filesystem://", transport_options=transport_options, queue="gpu")
        beat = wait_until(lambda: _heartbeat(hostname, "gpu"), message="ping on gpu via file-system broker")
        assert beat.queue == "gpu"

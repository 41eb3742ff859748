import socket

from celery import shared_task

from core.services import worker_heartbeat_record


def _device_name() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


@shared_task(bind=True, name="core.ping", ignore_result=True)
def ping(self) -> None:
    """Record that the worker which consumed this message is alive (hostname, queue, device)."""
    delivery = self.request.delivery_info or {}
    queue = delivery.get("routing_key") or delivery.get("exchange") or "default"
    worker_heartbeat_record(
        hostname=self.request.hostname or socket.gethostname(), queue=queue, device=_device_name()
    )

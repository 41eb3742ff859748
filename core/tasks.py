import os
import socket

from celery import shared_task

from core.services import worker_gpus_owned, worker_heartbeat_record


def _device() -> tuple[str, int, int | None]:
    """(name, how many, memory of one) of the devices this worker trains on: its GPUs, else the machine's RAM."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        count = worker_gpus_owned(visible=torch.cuda.device_count())  # the GPUs it owns, of those it sees
        memory = min(torch.cuda.get_device_properties(index).total_memory for index in range(count))
        return f"cuda:{torch.cuda.get_device_name(0)}", count, memory
    try:
        return "cpu", 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return "cpu", 1, None


@shared_task(bind=True, name="core.ping", ignore_result=True)
def ping(self) -> None:
    """Record that the worker which consumed this message is alive (hostname, queue, device)."""
    delivery = self.request.delivery_info or {}
    queue = delivery.get("routing_key") or delivery.get("exchange") or "default"
    device, count, memory = _device()
    worker_heartbeat_record(
        hostname=self.request.hostname or socket.gethostname(),
        queue=queue,
        device=device,
        device_count=count,
        device_memory_bytes=memory,
    )

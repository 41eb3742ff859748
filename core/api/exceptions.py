"""Django's ValidationError / PermissionDenied from the services become 400 / 403 with the services' messages
(RejectedInput: {"errors": [messages]});
core.jobs.BrokerUnavailable (the job is saved, its task could not be published) becomes 503."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import RejectedInput
from core.jobs import BrokerUnavailable
from core.lockout import SignInLocked

# What a view that creates or restarts a job documents for its 503 (`broker_unavailable_response`).
BROKER_DOWN = (
    "The task queue is unreachable: the job is saved and queued and starts by itself once the broker is back. "
    "Body: {detail, job, id, status}."
)


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "payload_too_large"


def validation_detail(error: DjangoValidationError) -> dict[str, list[str]]:
    """{field: [messages]}; errors not tied to a field go under `non_field_errors` (DRF's convention)."""
    if isinstance(error, RejectedInput):
        return {"errors": list(error.messages)}
    if hasattr(error, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): messages
            for field, messages in error.message_dict.items()
        }
    return {"non_field_errors": list(error.messages)}


def broker_unavailable_response(exc: BrokerUnavailable) -> Response:
    """503 with what was saved: the job keeps its place and starts by itself once the broker is back."""
    body = {"detail": str(exc), "job": exc.what, "id": exc.pk, "status": "queued"}
    return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "60"})


def exception_handler(exc, context):
    if isinstance(exc, BrokerUnavailable):
        return broker_unavailable_response(exc)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(validation_detail(exc))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, SignInLocked):
        exc = exceptions.Throttled(wait=exc.retry_after, detail=str(exc))
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE); send less, or upload a file to the import endpoint."
        )
    return drf_exception_handler(exc, context)

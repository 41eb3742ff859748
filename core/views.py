from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.selectors import broker_health, database_health


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose healthchecks: 200 when the database and broker answer, else 503."""
    database = database_health()
    broker = broker_health()
    ok = database.ok and broker.ok
    payload = {
        "status": "ok" if ok else "unavailable",
        "database": {"ok": database.ok, "detail": database.detail},
        "broker": {"ok": broker.ok, "detail": broker.detail},
    }
    return JsonResponse(payload, status=200 if ok else 503)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "core/home.html")

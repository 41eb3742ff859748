from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.roles import Role
from core.selectors import broker_health, database_health, pages_health, user_has_role


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Health for load balancers and compose healthchecks: 200 when the database and broker answer and pages
    render, else 503. Anyone gets ok/fail per check; staff and admins also get the details (hosts, ports, error messages),
    which would otherwise tell an anonymous caller how the deployment is wired."""
    checks = {"database": database_health(), "broker": broker_health(), "pages": pages_health()}
    ok = all(check.ok for check in checks.values())
    user = request.user
    show_details = user.is_authenticated and (user.is_staff or user_has_role(user=user, role=Role.ADMIN))
    payload: dict = {"status": "ok" if ok else "unavailable"}
    for name, check in checks.items():
        payload[name] = {"ok": check.ok, "detail": check.detail} if show_details else {"ok": check.ok}
    return JsonResponse(payload, status=200 if ok else 503)

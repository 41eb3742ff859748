"""View decorators by role (roles are Django groups, see core.roles)."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from core.selectors import user_has_role


def role_required(*roles: str):
    """Logged-in users with one of these roles; others get 403 (anonymous users go to the login page)."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if not any(user_has_role(user=request.user, role=role) for role in roles):
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator

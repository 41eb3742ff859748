"""Permission classes by role (roles are Django groups; superusers count as admins, see core.selectors)."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from core.roles import Role
from core.selectors import user_roles


class _Roles(BasePermission):
    roles: frozenset[str] = frozenset()
    message = "Your role does not allow this."

    def allowed(self, request) -> frozenset[str]:
        return self.roles

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        roles = getattr(request, "_cached_roles", None)
        if roles is None:
            roles = request._cached_roles = user_roles(user=user)
        return bool(roles & self.allowed(request))


class IsAnnotator(_Roles):
    """Annotators (and admins, who may annotate too)."""

    roles = frozenset({Role.ANNOTATOR, Role.ADMIN})


class IsResearcherOrAdmin(_Roles):
    roles = frozenset({Role.RESEARCHER, Role.ADMIN})


class IsAdmin(_Roles):
    roles = frozenset({Role.ADMIN})


class IsAnyRole(_Roles):
    roles = frozenset({Role.ANNOTATOR, Role.RESEARCHER, Role.ADMIN})


class ReadAnyRoleWriteAdmin(_Roles):
    """Everyone with a role reads; only admins write."""

    def allowed(self, request) -> frozenset[str]:
        return IsAnyRole.roles if request.method in SAFE_METHODS else IsAdmin.roles

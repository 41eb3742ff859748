"""API tokens (DRF's `rest_framework.authtoken`): one per user, created on demand, rotated on request."""

from __future__ import annotations

from django.contrib.auth import authenticate, get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from core.lockout import signin_succeeded
from core.selectors import user_roles


@transaction.atomic
def api_token_get_or_create(*, user, rotate: bool = False) -> Token:
    """The user's token (a new key when `rotate`). Users without a role get none: the API has nothing for them."""
    if not user.is_active:
        raise PermissionDenied("This account is disabled.")
    if not user_roles(user=user):
        raise PermissionDenied("This account has no role; ask an admin for one.")
    if rotate:
        Token.objects.filter(user=user).delete()
    token, _ = Token.objects.get_or_create(user=user)
    return token


def api_token_for_credentials(*, username: str, password: str, request=None) -> Token:
    user = authenticate(request, username=username, password=password)
    if user is None:
        raise ValidationError({"__all__": "Wrong username or password."})
    if request is not None:
        signin_succeeded(request=request, username=username)
    return api_token_get_or_create(user=user)


def api_token_for_username(*, username: str, rotate: bool = False) -> Token:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ValidationError({"username": f"No user {username!r}."})
    return api_token_get_or_create(user=user, rotate=rotate)

"""Write paths of the core domain: users with roles, their API tokens, worker heartbeats."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.lockout import signin_succeeded
from core.models import WorkerHeartbeat
from core.roles import ALL_ROLES
from core.selectors import user_roles, user_roles_forget


@transaction.atomic
def user_create_or_update(
    *, username: str, role: str, password: str | None = None, email: str = "", validate: bool = True
) -> tuple[AbstractUser, bool]:
    """Create the user (or update an existing one) and put it in exactly one role group.

    Returns (user, created).
    A user created without a password cannot log in until one is set.
    """
    if role not in ALL_ROLES:
        raise ValidationError({"role": f"Unknown role {role!r}; choose one of {', '.join(ALL_ROLES)}."})
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    created = user is None
    if created:
        user = User(username=username, email=email)
    elif email:
        user.email = email
    if password is not None:
        if validate:
            validate_password(password, user=user)
        user.set_password(password)
    elif created:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    role_groups = Group.objects.filter(name__in=ALL_ROLES)
    user.groups.remove(*role_groups)
    user.groups.add(Group.objects.get(name=role))
    user_roles_forget(user=user)
    return user, created


def worker_heartbeat_record(
    *,
    hostname: str,
    queue: str,
    device: str,
    device_count: int = 1,
    device_memory_bytes: int | None = None,
    seen_at: datetime | None = None,
) -> None:
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queue": queue,
            "device": device,
            "device_count": device_count,
            "device_memory_bytes": device_memory_bytes,
            "last_seen": seen_at or timezone.now(),
        },
    )


# API tokens (DRF's `rest_framework.authtoken`): one per user, created on demand, rotated on request.


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


def worker_gpus_owned(*, visible: int) -> int:
    """GPUs (cores on a CPU worker) this worker lends one stage: TRAINING_GPUS_PER_WORKER of the `visible` ones."""
    owned = settings.TRAINING_GPUS_PER_WORKER
    return visible if owned < 0 else max(1, min(owned, visible))

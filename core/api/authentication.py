"""Token authentication that loads the token's user and the user's roles in one query (DRF's class needs two:
the token with its user, then the role groups for the permission check)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from core.selectors import user_with_roles_for_token


class TokenAuthentication(authentication.TokenAuthentication):
    """`Authorization: Token <key>`, as DRF's; the same errors and `WWW-Authenticate: Token` challenge."""

    def authenticate_credentials(self, key):
        found = user_with_roles_for_token(key=key)
        if found is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user, created = found
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user=user, created=created)
        return (user, token)

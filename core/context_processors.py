from core.selectors import user_roles


def roles(request) -> dict:
    """`roles` in every template, so navigation shows only what the user's role may open."""
    user = getattr(request, "user", None)
    return {"roles": user_roles(user=user) if user is not None else set()}

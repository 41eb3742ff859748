import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command

from core.roles import ALL_ROLES
from core.selectors import user_roles

pytestmark = pytest.mark.django_db


def test_role_groups_exist_after_migrate():
    assert set(Group.objects.values_list("name", flat=True)) >= set(ALL_ROLES)


def test_create_user_command_creates_user_with_one_role(client):
    call_command(
        "create_user", "--username", "ann", "--role", "annotator", "--password", "a-long-passphrase-42"
    )
    user = User.objects.get(username="ann")
    assert user_roles(user=user) == {"annotator"}
    assert client.login(username="ann", password="a-long-passphrase-42")


def test_create_user_again_changes_role_instead_of_duplicating():
    call_command(
        "create_user", "--username", "rita", "--role", "annotator", "--password", "a-long-passphrase-42"
    )
    call_command("create_user", "--username", "rita", "--role", "admin")
    user = User.objects.get(username="rita")
    assert user_roles(user=user) == {"admin"}
    assert user.check_password("a-long-passphrase-42")  # role change keeps the password


def test_create_user_rejects_weak_password_and_saves_nothing():
    with pytest.raises(CommandError, match="too common|too short"):
        call_command("create_user", "--username", "weak", "--role", "researcher", "--password", "password")
    assert not User.objects.filter(username="weak").exists()


def test_create_user_without_password_cannot_log_in(client):
    call_command("create_user", "--username", "nopass", "--role", "researcher")
    assert not User.objects.get(username="nopass").has_usable_password()


def test_login_page_logout_and_home_requires_login(client):
    assert client.get("/").status_code == 302
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="username"' in page.content
    call_command(
        "create_user", "--username", "res", "--role", "researcher", "--password", "a-long-passphrase-42"
    )
    response = client.post(
        "/accounts/login/", {"username": "res", "password": "a-long-passphrase-42"}, follow=True
    )
    assert response.status_code == 200
    assert b"Welcome, res" in response.content
    assert b"researcher" in response.content
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_wrong_password_shows_an_error(client):
    call_command(
        "create_user", "--username", "ann", "--role", "annotator", "--password", "a-long-passphrase-42"
    )
    response = client.post("/accounts/login/", {"username": "ann", "password": "nope"})
    assert response.status_code == 200
    assert b"didn't match" in response.content

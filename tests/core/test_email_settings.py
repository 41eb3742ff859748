"""E-mail for password resets: the console backend unless EMAIL_URL or EMAIL_HOST names a mail server."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from feedback_app.settings import email_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
EMAIL_VARIABLES = (
    "EMAIL_URL",
    "EMAIL_HOST",
    "EMAIL_PORT",
    "EMAIL_HOST_USER",
    "EMAIL_HOST_PASSWORD",
    "EMAIL_USE_TLS",
)


@pytest.fixture(autouse=True)
def _no_email_environment(monkeypatch):
    for name in EMAIL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_production_default_is_the_console_backend_not_a_missing_local_smtp_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in EMAIL_VARIABLES}
    env.update({"DEBUG": "0", "SECRET_KEY": "x" * 50, "VAR_DIR": str(tmp_path)})
    probe = "from django.conf import settings; print(settings.EMAIL_BACKEND)"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "django.core.mail.backends.console.EmailBackend"


def test_email_url_with_starttls(monkeypatch):
    monkeypatch.setenv("EMAIL_URL", "smtp+tls://mailer%40example.org:s%3Acret@mail.example.org")
    assert email_settings() == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "mail.example.org",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "mailer@example.org",
        "EMAIL_HOST_PASSWORD": "s:cret",
        "EMAIL_USE_TLS": True,
        "EMAIL_USE_SSL": False,
    }


def test_email_url_with_implicit_tls_and_port(monkeypatch):
    monkeypatch.setenv("EMAIL_URL", "smtp+ssl://mail.example.org:2465")
    values = email_settings()
    assert (values["EMAIL_PORT"], values["EMAIL_USE_SSL"], values["EMAIL_USE_TLS"]) == (2465, True, False)


def test_email_url_file_backend(monkeypatch):
    monkeypatch.setenv("EMAIL_URL", "file:///app/var/mail")
    assert email_settings() == {
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": "/app/var/mail",
    }


def test_email_host_variables(monkeypatch):
    monkeypatch.setenv("EMAIL_HOST", "relay.internal")
    monkeypatch.setenv("EMAIL_PORT", "2525")
    monkeypatch.setenv("EMAIL_USE_TLS", "1")
    values = email_settings()
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (values["EMAIL_HOST"], values["EMAIL_PORT"], values["EMAIL_USE_TLS"]) == (
        "relay.internal",
        2525,
        True,
    )


@pytest.mark.parametrize(
    "url, message",
    [
        ("imap://mail.example.org", "is not one of smtp"),
        ("smtp://", "needs a host"),
        ("file://", "needs a folder"),
    ],
)
def test_bad_email_url_is_a_clear_error(monkeypatch, url, message):
    monkeypatch.setenv("EMAIL_URL", url)
    with pytest.raises(ImproperlyConfigured, match=message):
        email_settings()

"""Debian's Chromium through Playwright, with the flags this machine needs (no sandbox, no GPU, no network)."""

from __future__ import annotations

import os
from contextlib import contextmanager

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium_page():
    """A page in Debian's Chromium. Sync Playwright runs an event loop in this thread, so Django's async-unsafe
    check must be relaxed; the test makes no ORM call while the browser runs (those calls would get a
    connection of their own that the test database teardown does not see)."""
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
            try:
                context = browser.new_context()
                context.set_default_timeout(15_000)
                yield context.new_page()
            finally:
                browser.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def log_in(page, base_url: str, *, username: str, password: str, next_url: str, width: int = 1280) -> None:
    """Open `next_url` through the login form in a window `width` px wide (800 px high)."""
    page.set_viewport_size({"width": width, "height": 800})
    page.goto(f"{base_url}/accounts/login/?next={next_url}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.press("input[name=password]", "Enter")

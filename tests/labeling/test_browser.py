"""An annotator logs in and ranks a pairwise and a 4-way comparison with the keyboard only, in real Chromium."""

from __future__ import annotations

import shutil

import pytest

from labeling.models import Ranking
from tests.browser import CHROMIUM, chromium_page

from .conftest import make_comparison, make_project, make_user

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]


def test_keyboard_only_pairwise_and_four_way(live_server):
    project = make_project("kb", mode="ranking", k=4, overlap=1)
    pair = make_comparison(project, k=2, priority=2, text="Which answer is better?")
    four = make_comparison(project, k=4, priority=1, text="Rank these four answers.")
    make_user("kbuser", password="kb-pass-123")

    with chromium_page() as page:
        _rank_with_the_keyboard(page, live_server.url)

    pairwise = Ranking.objects.get(comparison=pair)
    left, right = (str(rid) for rid in pairwise.display_order)
    assert pairwise.ranks == {left: 2, right: 1} and not pairwise.both_bad
    ranked = Ranking.objects.get(comparison=four)
    shown = [str(rid) for rid in ranked.display_order]
    # Given ranks 4, 3, 1, 3 in display order → dense 3, 2, 1, 2.
    assert [ranked.ranks[rid] for rid in shown] == [3, 2, 1, 2]
    assert Ranking.objects.count() == 2


def _rank_with_the_keyboard(page, base_url: str) -> None:
    page.goto(f"{base_url}/accounts/login/?next=/annotate/kb/")
    page.keyboard.type("kbuser")
    page.keyboard.press("Tab")
    page.keyboard.type("kb-pass-123")
    page.keyboard.press("Enter")
    page.wait_for_selector('#workspace[data-kind="pairwise"]')
    # Keys pressed before the deferred scripts (htmx, annotate.js) ran would be lost.
    page.wait_for_function("() => document.readyState === 'complete' && window.htmx !== undefined")

    page.keyboard.press("2")  # B is better: submits and htmx swaps in the 4-way comparison
    page.wait_for_selector('#workspace[data-kind="ranking"]')
    assert page.locator('[data-testid="done-today"]').inner_text() == "1"

    page.keyboard.press("?")  # guidelines open and close with the keyboard too
    page.wait_for_selector("#guidelines[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#guidelines:not([open])", state="attached")

    page.keyboard.press("Enter")  # nothing ranked yet: the server refuses and the message is swapped in (422)
    page.wait_for_selector('[data-testid="error"]')
    assert "have none" in page.locator('[data-testid="error"]').inner_text()

    # Focus starts on the first card; each digit ranks the focused card and moves on. 3 and 3 make a tie.
    for key in ["4", "3", "1", "3"]:
        page.keyboard.press(key)
    page.keyboard.press("ArrowUp")  # moving focus changes nothing; Enter submits from any card
    page.keyboard.press("Enter")
    page.wait_for_selector('[data-testid="empty"]')

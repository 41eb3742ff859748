"""An annotator logs in and ranks a pairwise and a 4-way comparison with the keyboard only, in real Chromium."""

from __future__ import annotations

import shutil

import pytest

from labeling.models import Prompt, Ranking, Response
from labeling.services.projects import comparison_get_or_create
from tests.browser import CHROMIUM, chromium_page, log_in
from tests.labeling.factories import make_comparison, make_project, make_user

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


# htmx has wired the swapped-in undo form (a key pressed before that would post the form without htmx).
UNDO_WIRED = """() => {
  const form = document.querySelector('#undo-bar form');
  return !!(form && form['htmx-internal-data'] && form['htmx-internal-data'].initHash);
}"""
LONG = "\n\n".join(
    f"Paragraph {n}: " + "a fairly long sentence about the question at hand, " * 6 for n in range(12)
)


def test_long_responses_sticky_bar_side_by_side_collapse_and_undo_restores_the_choice(live_server):
    project = make_project("long", mode="ranking", k=3, overlap=1)
    for n, (k, priority) in enumerate([(2, 3), (2, 2), (3, 1)]):
        prompt = Prompt.objects.create(
            project=project, external_id=f"l{n}", messages=[{"role": "user", "content": "Explain."}]
        )
        responses = [
            Response.objects.create(
                prompt=prompt, external_id=f"r{i}", content=f"{LONG} (answer {i})", source_name=f"m{i}"
            )
            for i in range(k)
        ]
        comparison_get_or_create(prompt=prompt, responses=responses, priority=priority)
    make_user("longuser", password="long-pass-123")

    with chromium_page() as page:
        log_in(
            page, live_server.url, username="longuser", password="long-pass-123", next_url="/annotate/long/"
        )
        page.wait_for_selector('#workspace[data-kind="pairwise"]')
        page.wait_for_function("() => document.readyState === 'complete' && window.htmx !== undefined")
        first_item = page.get_attribute("#workspace", "data-assignment")

        # Wide screen: A and B side by side; long answers collapsed; the choices in view without scrolling.
        a, b = (page.locator(".response-card").nth(i).bounding_box() for i in range(2))
        assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"] + a["width"] - 1
        body = page.locator(".response-body").first
        collapsed = body.bounding_box()["height"]
        assert collapsed < 450
        bar = page.locator("#action-bar").bounding_box()
        assert bar["y"] + bar["height"] <= 800 + 1, bar
        page.locator("button.expand").first.click()
        assert body.bounding_box()["height"] > 2 * collapsed
        page.mouse.wheel(0, 5000)  # scrolled to the middle of a long answer, the bar is still on screen
        page.wait_for_timeout(200)
        bar = page.locator("#action-bar").bounding_box()
        assert 0 <= bar["y"] and bar["y"] + bar["height"] <= 800 + 1, bar

        page.locator("#workspace").focus()
        page.keyboard.press("2")  # B is better
        page.wait_for_function(
            f"() => document.querySelector('#workspace').dataset.assignment !== '{first_item}'"
        )
        page.wait_for_function(UNDO_WIRED)
        page.keyboard.press("u")  # undo: the item is back, with the button that was pressed marked
        page.wait_for_selector(f'#workspace[data-assignment="{first_item}"]')
        assert page.locator("button[data-previous]").get_attribute("value") == "b"
        page.keyboard.press("1")  # change of mind: A
        page.wait_for_function(
            f"() => document.querySelector('#workspace').dataset.assignment !== '{first_item}'"
        )

        # Narrow screen: stacked.
        page.set_viewport_size({"width": 480, "height": 800})
        a, b = (page.locator(".response-card").nth(i).bounding_box() for i in range(2))
        assert b["y"] >= a["y"] + a["height"] - 1 and abs(a["x"] - b["x"]) < 2
        page.keyboard.press("0")  # both bad
        page.wait_for_selector('#workspace[data-kind="ranking"]')

        # Ranking: digits fill the bar's inputs and the cards' badges; Enter submits; undo brings them back.
        for key in ["2", "3", "1"]:
            page.keyboard.press(key)
        badges = page.locator(".rank-badge").all_inner_texts()
        assert badges == ["rank 2", "rank 3", "rank 1"]
        page.keyboard.press("Enter")
        page.wait_for_selector('[data-testid="empty"]')
        page.wait_for_function(UNDO_WIRED)
        page.keyboard.press("u")
        page.wait_for_selector('#workspace[data-kind="ranking"]')
        assert page.locator("#action-bar .rank-input").evaluate_all("inputs => inputs.map(i => i.value)") == [
            "2",
            "3",
            "1",
        ]

    pairwise = list(Ranking.objects.order_by("id"))
    assert len(pairwise) == 2  # the two pairwise items; the 3-way one was withdrawn again
    assert not pairwise[0].both_bad and pairwise[1].both_bad
    first, second = (str(rid) for rid in pairwise[0].display_order)
    assert pairwise[0].ranks == {first: 1, second: 2}  # A, the changed mind, not the undone B

/* Keyboard and drag wiring of the annotator workspace. The server owns every rule; this file only moves focus,
 * fills the form and clicks its buttons, so the page also works (more slowly) without it.
 *
 * Pairwise: 1 / 2 / 3 / 0 = A better / B better / tie / both bad (submits at once).
 * Ranking:  ↑ ↓ (j / k) move between responses, 1…k gives the focused one that rank and moves on,
 *           Shift+↑ ↓ moves it in the list (ranks follow the order), drag with the mouse too, Enter submits.
 * Always:   f flags, r rationale, s skip (Enter in the reason list skips), u undo, ? guidelines, Esc closes.
 */
(function () {
  "use strict";

  function workspace() { return document.getElementById("workspace"); }
  function kind() { var ws = workspace(); return ws ? ws.dataset.kind : "empty"; }
  function cards() { return Array.prototype.slice.call(document.querySelectorAll("#rank-list .rank-card")); }
  function cardOf(el) { return el && el.closest ? el.closest(".rank-card") : null; }

  function focusCard(card) {
    if (!card) return;
    cards().forEach(function (c) { c.classList.toggle("focused", c === card); });
    card.focus({ preventScroll: false });
  }

  function currentCard() {
    var card = cardOf(document.activeElement);
    return card || cards()[0] || null;
  }

  // The rank inputs live in the sticky action bar; each card shows its rank as a badge.
  function inputOf(card) {
    return document.querySelector('#action-bar .rank-input[data-response-id="' + card.dataset.responseId + '"]');
  }

  function showRank(responseId, value) {
    var badge = document.querySelector('.rank-badge[data-rank-of="' + responseId + '"]');
    if (badge) badge.textContent = value ? "rank " + value : "";
  }

  function setRank(card, value) {
    var input = inputOf(card);
    if (input) input.value = value;
    showRank(card.dataset.responseId, value);
  }

  function renumber() {
    cards().forEach(function (card, index) { setRank(card, String(index + 1)); });
  }

  function moveCard(card, delta) {
    var list = cards();
    var index = list.indexOf(card);
    var target = index + delta;
    if (index < 0 || target < 0 || target >= list.length) return;
    var parent = card.parentNode;
    if (delta < 0) parent.insertBefore(card, list[target]);
    else parent.insertBefore(card, list[target].nextSibling);
    renumber();
    focusCard(card);
  }

  function openPanel(id, focusSelector) {
    var panel = document.getElementById(id);
    if (!panel) return;
    panel.open = true;
    var target = panel.querySelector(focusSelector);
    if (target) target.focus();
  }

  function isTyping(el) {
    if (!el) return false;
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    if (el.classList && el.classList.contains("rank-input")) return true;  // typing a rank into the bar
    if (tag === "INPUT") {
      var type = (el.type || "").toLowerCase();
      return type !== "number" && type !== "checkbox" && type !== "radio";
    }
    return el.isContentEditable === true;
  }

  function clickKey(key) {
    var button = document.querySelector('#ranking-form button[data-key="' + key + '"]');
    if (button) { button.click(); return true; }
    return false;
  }

  function onKeyDown(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var dialog = document.getElementById("guidelines");
    var active = document.activeElement;
    if (dialog && dialog.open) {
      if (event.key === "?") { dialog.close(); event.preventDefault(); }
      return;  // Esc closes the dialog natively
    }
    if (event.key === "Escape") {
      document.querySelectorAll("#workspace details.panel[open]").forEach(function (d) { d.open = false; });
      if (kind() === "ranking") focusCard(currentCard()); else { var ws = workspace(); if (ws) ws.focus(); }
      return;
    }
    if (active && active.id === "skip-reason" && event.key === "Enter") {
      event.preventDefault();
      document.getElementById("skip-form").requestSubmit();
      return;
    }
    if (isTyping(active)) return;

    var key = event.key;
    if (key === "?") { if (dialog) dialog.showModal(); event.preventDefault(); return; }
    if (key === "u") { var undo = document.getElementById("undo-button"); if (undo) { undo.click(); event.preventDefault(); } return; }
    if (kind() === "empty") return;
    if (key === "s") { openPanel("skip-panel", "select"); event.preventDefault(); return; }
    if (key === "f") { openPanel("flags-panel", "input"); event.preventDefault(); return; }
    if (key === "r") { openPanel("rationale-panel", "textarea"); event.preventDefault(); return; }

    if (kind() === "pairwise") {
      if (["1", "2", "3", "0"].indexOf(key) >= 0 && clickKey(key)) event.preventDefault();
      return;
    }

    // Ranking
    var list = cards();
    var card = currentCard();
    if (!card) return;
    var index = list.indexOf(card);
    if (/^[1-8]$/.test(key)) {
      var rank = parseInt(key, 10);
      if (rank <= list.length) {
        event.preventDefault();
        setRank(card, key);
        card.classList.add("ranked");
        focusCard(list[Math.min(index + 1, list.length - 1)]);
      }
      return;
    }
    if (key === "ArrowDown" || key === "ArrowUp" || key === "j" || key === "k") {
      var delta = (key === "ArrowDown" || key === "j") ? 1 : -1;
      event.preventDefault();
      if (event.shiftKey) moveCard(card, delta);
      else focusCard(list[Math.max(0, Math.min(list.length - 1, index + delta))]);
      return;
    }
    if (key === "Enter") {
      if (active && active.tagName === "SUMMARY") return;  // Enter toggles a panel there
      event.preventDefault();
      var submit = document.getElementById("submit-ranking");
      if (submit) submit.click();
    }
  }

  var dragged = null;
  function wireDrag(root) {
    var list = root.querySelector ? root.querySelector("#rank-list") : null;
    if (!list || list.dataset.wired) return;
    list.dataset.wired = "1";
    list.addEventListener("dragstart", function (event) {
      dragged = cardOf(event.target);
      if (dragged) { dragged.classList.add("dragging"); event.dataTransfer.effectAllowed = "move"; event.dataTransfer.setData("text/plain", dragged.dataset.responseId); }
    });
    list.addEventListener("dragover", function (event) {
      var over = cardOf(event.target);
      if (!dragged || !over || over === dragged) return;
      event.preventDefault();
      var box = over.getBoundingClientRect();
      var after = event.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? over.nextSibling : over);
    });
    list.addEventListener("drop", function (event) { event.preventDefault(); });
    list.addEventListener("dragend", function () {
      if (dragged) { dragged.classList.remove("dragging"); renumber(); focusCard(dragged); }
      dragged = null;
    });
    list.addEventListener("focusin", function (event) {
      var card = cardOf(event.target);
      cards().forEach(function (c) { c.classList.toggle("focused", c === card); });
    });
  }

  function init(root) {
    wireDrag(root || document);
    if (kind() === "ranking") {
      var first = cards()[0];
      if (first && !cardOf(document.activeElement)) focusCard(first);
    } else {
      var ws = workspace();
      if (ws && (!document.activeElement || document.activeElement === document.body || !document.body.contains(document.activeElement))) ws.focus();
    }
  }

  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("input", function (event) {
    var input = event.target;
    if (input.classList && input.classList.contains("rank-input")) showRank(input.dataset.responseId, input.value);
  });
  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:afterSettle", function () { init(document); });
})();

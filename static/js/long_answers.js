// Long answers start collapsed to a screenful (labeling/partials/response_body.html); their button shows all and
// collapses again. Used by the annotator workspace and "your rankings".
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.expand") : null;
    if (!button) return;
    var body = document.getElementById(button.getAttribute("aria-controls"));
    if (!body) return;
    var collapsed = body.classList.toggle("collapsed");
    button.setAttribute("aria-expanded", collapsed ? "false" : "true");
    button.textContent = collapsed ? button.dataset.show : button.dataset.hide;
  });
})();

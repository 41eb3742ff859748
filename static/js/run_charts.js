// The run page: one small line chart per metric (headline curves at once, the others when their toggle opens),
// numbers written as people write them (2e-5), and the reader's open/closed choices kept across the 2 s refresh.
(function () {
  "use strict";

  const format = (value) => (window.humanNumber ? window.humanNumber(value) : String(value));

  function draw(container) {
    const data = document.getElementById(container.dataset.seriesId);
    if (!data || typeof Chart === "undefined" || container.closest("details:not([open])")) return;
    const series = JSON.parse(data.textContent);
    container.querySelectorAll("figure").forEach((figure) => figure.remove());
    Object.keys(series).sort().forEach((name) => {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      const caption = document.createElement("figcaption");
      caption.textContent = name;
      figure.dataset.metric = name;
      figure.append(caption, canvas);
      container.append(figure);
      new Chart(canvas, {
        type: "line",
        data: {
          labels: series[name].map((point) => point[0]),
          datasets: [{ data: series[name].map((point) => point[1]), borderColor: "#2f5bd3", pointRadius: 0, borderWidth: 1.5 }],
        },
        options: {
          animation: false,
          plugins: {
            legend: { display: false },
            tooltip: { callbacks: { label: (item) => `${name} ${format(item.parsed.y)}` } },
          },
          scales: {
            x: { title: { display: true, text: "step" }, ticks: { maxTicksLimit: 6 } },
            y: { ticks: { maxTicksLimit: 5, callback: (value) => format(value) } },
          },
        },
      });
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll(".charts[data-series-id]").forEach(draw);
  }

  // Which <details> (by id) the reader opened or closed, so a refresh does not undo it. A click on a summary is
  // the reader (keyboard activation clicks too); a toggle alone may be the parser or the refresh.
  const chosen = new Map();
  document.addEventListener("click", (event) => {
    const summary = event.target.closest ? event.target.closest("#run-live summary") : null;
    const details = summary ? summary.parentElement : null;
    if (details && details.id && event.target.closest("a, button") === null) chosen.set(details.id, !details.open);
  });
  document.addEventListener("toggle", (event) => {
    if (event.target instanceof HTMLDetailsElement && event.target.open) drawAll(event.target);
  }, true);

  function restore(root) {
    chosen.forEach((open, id) => {
      const details = document.getElementById(id);
      if (details) details.open = open;
    });
    drawAll(root);
  }

  document.addEventListener("DOMContentLoaded", () => drawAll(document));
  document.addEventListener("htmx:afterSettle", (event) => restore(event.detail.elt.parentElement || document));
})();

// Draws one small line chart per metric of each stage on the run page, again after every htmx refresh.
(function () {
  "use strict";

  function draw(container) {
    const data = document.getElementById(container.dataset.seriesId);
    if (!data || typeof Chart === "undefined") return;
    const series = JSON.parse(data.textContent);
    container.querySelectorAll("figure").forEach((figure) => figure.remove());
    Object.keys(series).sort().forEach((name) => {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      const caption = document.createElement("figcaption");
      caption.textContent = name;
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
          plugins: { legend: { display: false } },
          scales: { x: { title: { display: true, text: "step" }, ticks: { maxTicksLimit: 6 } }, y: { ticks: { maxTicksLimit: 5 } } },
        },
      });
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll(".charts[data-series-id]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", () => drawAll(document));
  document.addEventListener("htmx:afterSettle", (event) => drawAll(event.detail.elt.parentElement || document));
})();

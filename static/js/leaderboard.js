// Rating of each model with its bootstrap interval: a floating bar from low to high and a point at the estimate.
document.addEventListener("DOMContentLoaded", () => {
  "use strict";
  const data = document.getElementById("leaderboard-data");
  const canvas = document.getElementById("leaderboard-chart");
  if (!data || !canvas || typeof Chart === "undefined") return;
  const rows = JSON.parse(data.textContent);
  new Chart(canvas, {
    data: {
      labels: rows.map((row) => (row.preliminary ? `${row.model} (preliminary)` : row.model)),
      datasets: [
        { type: "bar", label: "95% interval", data: rows.map((row) => [row.low, row.high]), backgroundColor: "rgba(47, 91, 211, 0.25)" },
        { type: "line", label: "rating", data: rows.map((row) => row.elo), showLine: false, pointRadius: 5, borderColor: "#2f5bd3", backgroundColor: "#2f5bd3" },
      ],
    },
    options: { indexAxis: "y", animation: false, scales: { x: { title: { display: true, text: "rating" } } } },
  });
});

// Launch form: the CPU demo size trains every stage with LoRA (a few minutes on a CPU); the error summary
// takes the focus so a screen reader reads it first.
document.addEventListener("DOMContentLoaded", () => {
  "use strict";
  const summary = document.getElementById("error-summary");
  if (summary) summary.focus();
  const size = document.getElementById("id_size");
  if (!size) return;
  size.addEventListener("change", () => {
    if (size.value !== "cpu_demo") return;
    // Runs before the form's own change listener (htmx), so the estimate already sees LoRA.
    for (const select of document.querySelectorAll("select[name^='peft_']")) select.value = "lora";
  });
});

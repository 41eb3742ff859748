// Numbers as people write them (same rule as core/templatetags/numbers.py): four significant digits, trimmed
// scientific notation below 0.001 and from 100,000 on — 2e-5, not 2.000000E-5.
(function () {
  "use strict";
  function humanNumber(value) {
    if (typeof value !== "number" || !isFinite(value)) return String(value);
    if (value === 0) return "0";
    const size = Math.abs(value);
    if (size < 1e-3 || size >= 1e5) {
      return value.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
    }
    if (size >= 1000) return String(Math.round(value));
    return String(Number(value.toPrecision(4)));
  }
  window.humanNumber = humanNumber;
})();

// The forms' own checks (a field to fill, a number out of its range) said in the page's
// language: the browser words them in its own, which need not be the one chosen on the page.
(function () {
  "use strict";
  var data = document.getElementById("form-strings");
  if (!data) { return; }
  var say = JSON.parse(data.textContent);

  function message(field) {
    var valid = field.validity;
    if (valid.valueMissing) { return field.tagName === "SELECT" ? say.choose : say.fill; }
    if (field.type === "number" && (valid.badInput || valid.rangeUnderflow || valid.rangeOverflow)) {
      if (field.min !== "" && field.max !== "") {
        return say.range.replace("{min}", field.min).replace("{max}", field.max);
      }
      return say.number;
    }
    if (field.type === "datetime-local" && valid.badInput) { return say.datetime; }
    if (valid.patternMismatch && field.inputMode === "numeric") { return say.digits; }
    if (valid.tooLong) { return say.too_long.replace("{max}", String(field.maxLength)); }
    if (valid.tooShort) { return say.too_short.replace("{min}", String(field.minLength)); }
    return "";  // any other case: the browser's own words
  }

  // Each time the form is checked, each refused field gets its words.
  document.addEventListener("invalid", function (event) {
    var field = event.target;
    field.setCustomValidity("");
    if (!field.validity.valid) { field.setCustomValidity(message(field)); }
  }, true);
  // Words set at the last check never outlive it: cleared as the field changes, and before
  // the next check (a script may have filled the field, as the report form's map does).
  function clear(field) { if (field && field.setCustomValidity) { field.setCustomValidity(""); } }
  document.addEventListener("input", function (event) { clear(event.target); }, true);

  // Typing keeps the officer signed in: a report typed during a long phone call was lost when
  // its sending found the session ended for want of use. At most one word a while (the
  // page's own answer slides the session's idle end).
  var aliveMs = parseInt(document.body.dataset.aliveMs || "0", 10), told = Date.now();
  if (aliveMs > 0) {
    document.addEventListener("input", function () {
      if (Date.now() - told < aliveMs) { return; }
      told = Date.now();
      fetch("/alive", {method: "POST", credentials: "same-origin"}).catch(function () {
        return null;  // not reached: the sending says so, as it would have
      });
    }, true);
  }
  document.addEventListener("change", function (event) { clear(event.target); }, true);
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button, input[type=submit]");
    if (button && button.form && button.type === "submit") {
      Array.prototype.forEach.call(button.form.elements, clear);
    }
  }, true);
})();

// The board, live: one EventSource per tab; each change (id = ledger position) reloads the
// rows as the signed-in officer, at least at that position, with the page's filters. The
// line above the rows says whether changes are arriving.
(function () {
  "use strict";
  // On a phone-sized window the filters fold away unless one is chosen (board.html).
  var box = document.getElementById("filters-box");
  if (box && !box.hasAttribute("data-chosen") && window.matchMedia("(max-width: 640px)").matches) {
    box.open = false;
  }
  var live = document.getElementById("live");
  var rows = document.getElementById("rows");
  var filters = new URLSearchParams(window.location.search);
  filters.delete("reported");
  filters.delete("incident"); // the report just recorded, said once above the board

  window.roomFollow(
    parseInt(live.dataset.after, 10) || 0,
    function (wanted) {
      var query = new URLSearchParams(filters);
      query.set("min_position", String(wanted));
      return fetch("/board/rows?" + query.toString(), {credentials: "same-origin"});
    },
    function (response) { return response.text(); },
    function (html, wanted) {
      var before = names();
      window.roomReplace(rows, html);
      live.dataset.position = String(wanted);
      mark(before);
    }
  );

  // The incidents on the board now.
  function names() {
    var seen = {};
    rows.querySelectorAll("tr[data-name]").forEach(function (row) { seen[row.dataset.name] = true; });
    return seen;
  }

  // A row that was not on the board before the reload is new to the officer watching it:
  // marked for a while, and said once for a screen reader (#arrived). It came in silently.
  function mark(before) {
    var arrived = [];
    rows.querySelectorAll("tr[data-name]").forEach(function (row) {
      if (before[row.dataset.name]) { return; }
      row.classList.add("arrived");
      var title = row.querySelector("td.title a");
      if (title) { arrived.push(title.textContent); }
    });
    if (arrived.length === 0) { return; }
    var said = document.getElementById("arrived");
    said.textContent = said.dataset.text.replace("{titles}", arrived.join("; "));
    window.setTimeout(function () {
      rows.querySelectorAll("tr.arrived").forEach(function (row) { row.classList.remove("arrived"); });
    }, 30000);
  }
})();

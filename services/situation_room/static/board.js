// The board, live: one EventSource per tab; each change (id = ledger position) reloads the
// rows as the signed-in officer, at least at that position, with the page's filters. The
// line above the rows says whether changes are arriving.
(function () {
  "use strict";
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
      window.roomReplace(rows, html);
      live.dataset.position = String(wanted);
    }
  );
})();

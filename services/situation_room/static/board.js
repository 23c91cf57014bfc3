// The board, live: one EventSource per tab; each change (id = ledger position) reloads the
// rows as the signed-in officer, at least at that position, with the page's filters. The
// line above the rows says whether changes are arriving.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var rows = document.getElementById("rows");
  var filters = new URLSearchParams(window.location.search);
  filters.delete("reported");
  var wanted = 0, loading = false, again = false, feed = null;

  function reload() {
    if (loading) { again = true; return; }
    loading = true;
    var query = new URLSearchParams(filters);
    query.set("min_position", String(wanted));
    fetch("/board/rows?" + query.toString(), {credentials: "same-origin"})
      .then(function (response) {
        if (window.roomSignedOut(response)) { return null; }
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        window.roomReplace(rows, html);
        live.dataset.position = String(wanted);
        feed.loaded();
      })
      .catch(function (error) { feed.failed(error); window.setTimeout(reload, window.roomRetryMs); })
      .finally(function () { loading = false; if (again) { again = false; reload(); } });
  }

  function heard(event) {
    var position = parseInt(event.lastEventId, 10);
    if (!isNaN(position) && position > wanted) { wanted = position; }
    reload();
  }

  feed = window.roomLive(parseInt(live.dataset.after, 10) || 0, heard, reload);
})();

// The board, live: one EventSource per tab; each change (id = ledger position) reloads the
// rows as the signed-in officer, at least at that position, with the page's filters. The
// line above the rows says whether changes are arriving.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var rows = document.getElementById("rows");
  var filters = new URLSearchParams(window.location.search);
  filters.delete("reported");
  var wanted = 0, loading = false, again = false;

  function reload() {
    if (loading) { again = true; return; }
    loading = true;
    var query = new URLSearchParams(filters);
    query.set("min_position", String(wanted));
    fetch("/board/rows?" + query.toString(), {credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.text();
      })
      .then(function (html) { rows.innerHTML = html; live.dataset.position = String(wanted); })
      .catch(function (error) { live.textContent = live.dataset.failed + " (" + error + ")"; })
      .finally(function () { loading = false; if (again) { again = false; reload(); } });
  }

  function heard(event) {
    var position = parseInt(event.lastEventId, 10);
    if (!isNaN(position) && position > wanted) { wanted = position; }
    reload();
  }

  // Whether changes reach this tab: the page says so (status) when its stream opens and
  // whenever it changes; back from an interruption, the rows are read again.
  function status(event) {
    var on = JSON.parse(event.data).live, was = live.dataset.state;
    live.textContent = on ? live.dataset.open : live.dataset.stale;
    live.dataset.state = on ? "open" : "stale";
    if (on && was === "stale") { reload(); }
  }

  var source = new EventSource("/events?after=" + encodeURIComponent(live.dataset.after));
  source.addEventListener("status", status);
  source.addEventListener("error", function () { live.textContent = live.dataset.reconnecting; live.dataset.state = "reconnecting"; });
  source.addEventListener("change", heard);
  source.addEventListener("resync", heard);
})();

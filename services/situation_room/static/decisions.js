// The decisions in force, live like the board (one EventSource per tab, static/live.js): a
// change reads the rows again, as the signed-in officer, at least at its ledger position. So
// does the clock: the end of the soonest decision (it leaves the list then) and every minute
// (the time left, and a decision whose start has come).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var rows = document.getElementById("decisions");
  var wanted = 0, loading = false, again = false, feed = null, timer = null;
  var MINUTE_MS = 60000;

  // The next read by the clock: a second after the soonest end, or in a minute. The rows say
  // how long until that end by the page's clock: a browser's clock set wrong changes nothing.
  function schedule() {
    if (timer !== null) { window.clearTimeout(timer); }
    var first = rows.querySelector("tr[data-soonest]");
    var soonest = first ? parseInt(first.dataset.soonest, 10) : 0;
    var wait = soonest > 0 ? Math.min(MINUTE_MS, soonest + 1000) : MINUTE_MS;
    timer = window.setTimeout(reload, wait);
  }

  function reload() {
    if (loading) { again = true; return; }
    loading = true;
    fetch("/decisions/rows?min_position=" + String(wanted), {credentials: "same-origin"})
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
        schedule();
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
  schedule();
})();

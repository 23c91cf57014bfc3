// The decisions in force, live like the board (one EventSource per tab, static/live.js): a
// change reads the rows again, as the signed-in officer, at least at its ledger position. So
// does the clock: the end of the soonest decision (it leaves the list then) and every minute
// (the time left, and a decision whose start has come).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var rows = document.getElementById("decisions");
  var timer = null, reload = null;
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

  reload = window.roomFollow(
    parseInt(live.dataset.after, 10) || 0,
    function (wanted) {
      return fetch("/decisions/rows?min_position=" + String(wanted), {credentials: "same-origin"});
    },
    function (response) { return response.text(); },
    function (html, wanted) {
      window.roomReplace(rows, html);
      live.dataset.position = String(wanted);
      schedule();
    }
  );
  schedule();
})();

// An incident's page, live: it does not rewrite itself (an officer may be typing into one of
// its forms), it says that the incident changed since the page was shown, with what changed
// and a link to the page as it is now. Before, the page kept the old status and lead, and the
// next action was refused for a version moved on. A change heard whose position is the
// page's own (the officer's action, heard after the page came back) is not one.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var banner = document.getElementById("changed");
  var what = document.getElementById("changed-what");
  var name = banner.dataset.incident;
  var shown = parseInt(banner.dataset.position, 10) || 0;
  var words = JSON.parse(document.getElementById("event-words").textContent);

  function say(text) {
    what.textContent = text;
    banner.hidden = false;
  }

  // A resync (the tab may have missed changes): the page as it is now says whether this
  // incident moved on, by its version.
  function check() {
    fetch(window.location.pathname, {credentials: "same-origin"})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var now = new DOMParser().parseFromString(html, "text/html").getElementById("changed");
        if (now && parseInt(now.dataset.position, 10) > shown) { say(""); }
      }, function () { return null; });
  }

  function heard(event) {
    var position = parseInt(event.lastEventId, 10);
    // The position the tab has heard up to, of any incident (a resync's: where it resumes).
    if (!isNaN(position)) { live.dataset.heard = String(position); }
    if (event.type === "resync") { check(); return; }
    var data = JSON.parse(event.data);
    if (data.incident !== name || !(position > shown)) { return; }
    say(words[data.type] || data.type);
  }

  window.roomLive(parseInt(live.dataset.after, 10) || 0, heard, check);
}());

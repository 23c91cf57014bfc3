// The event stream of a board, a map or the decisions in force (one per tab), shared by the
// three pages. The line #live says whether changes arrive (the page's "status" events: its
// subscription to the notifier live, and the ledger reached, without which no change comes
// and no read succeeds) and whether the last read of the rows or the map failed; a stream
// the page answers with
// something else than a stream (the browser gives up on it) is asked about: a session that
// ended goes to the sign-in page rather than leaving the tab "reconnecting" for ever.
window.roomLive = function (after, heard, resumed) {
  "use strict";
  var live = document.getElementById("live");
  var last = after, source = null;

  // "open", "stale" (the notifier not heard from) or "down" (the ledger not reached): each
  // its text from the line's data attributes, in the page's language. Back to "open", the
  // view is read again.
  function status(event) {
    var data = JSON.parse(event.data), was = live.dataset.state;
    var state = data.ledger === false ? "down" : (data.live ? "open" : "stale");
    live.textContent = live.dataset[state];
    live.dataset.state = state;
    if (state === "open" && (was === "stale" || was === "down")) { resumed(); }
  }

  function change(event) {
    var position = parseInt(event.lastEventId, 10);
    if (!isNaN(position) && position > last) { last = position; }
    heard(event);
  }

  function lost() {
    live.textContent = live.dataset.reconnecting;
    live.dataset.state = "reconnecting";
    if (source.readyState !== EventSource.CLOSED) { return; }  // the browser tries again
    // Answered, but not with a stream: signed out (the page redirects to the sign-in page),
    // or the page unwell (try again in a while).
    fetch(window.location.href, {method: "HEAD", credentials: "same-origin", redirect: "manual"})
      .then(function (response) {
        if (response.type === "opaqueredirect") { window.location.assign("/login?ended"); return; }
        window.setTimeout(open, 5000);
      }, function () { window.setTimeout(open, 5000); });
  }

  function open() {
    source = new EventSource("/events?after=" + encodeURIComponent(String(last)));
    source.addEventListener("status", status);
    source.addEventListener("error", lost);
    source.addEventListener("change", change);
    source.addEventListener("resync", change);
  }

  open();

  // What the page's reads of its rows or its map report back: a failure is said on the line
  // (the page reads again a moment later), the next success clears it. Its reason:
  // "unreachable" (the browser could not make the read), an HTTP status, or null (an answer
  // the page could not use); said in the line's words, never the browser's own message.
  return {
    failed: function (reason) {
      if (live.dataset.state === "down") { return; }  // why is said already
      live.textContent = reason === "unreachable" ? live.dataset.unreachable
        : reason === 503 ? live.dataset.noLedger
          : typeof reason === "number" ? live.dataset.answered.replace("{status}", String(reason))
            : live.dataset.failed;
      live.dataset.state = "failed";
    },
    loaded: function () {
      if (live.dataset.state !== "failed") { return; }
      live.textContent = live.dataset.open;
      live.dataset.state = "open";
    }
  };
};

// Rows read again put in place of the old ones: a link reached with the keyboard keeps the
// focus (the same link in the new rows), rather than the focus falling back to the top of the
// page at every change heard.
window.roomReplace = function (container, html) {
  "use strict";
  var active = document.activeElement;
  var href = active && container.contains(active) ? active.getAttribute("href") : null;
  container.innerHTML = html;
  if (href === null) { return; }
  var links = container.querySelectorAll("a[href]");
  for (var i = 0; i < links.length; i += 1) {
    if (links[i].getAttribute("href") === href) { links[i].focus({preventScroll: true}); return; }
  }
};

// How long after a failed read the board or the map reads again.
window.roomRetryMs = 5000;

// A read answered by the sign-in page (redirected there: the session ended, or the ledger no
// longer takes the officer's token): the tab goes there too, rather than showing that page
// inside the board or leaving rows that are no longer updated.
window.roomSignedOut = function (response) {
  "use strict";
  if (!response.redirected) { return false; }
  window.location.assign("/login?ended");
  return true;
};

// A page's view kept current (the board's rows, the map, the decisions in force): each change
// heard, or the stream resumed, reads the view again at least at the ledger position heard,
// one read at a time (a change heard during a read reads once more after it); a failed read
// is said on the line #live and tried again a moment later. read(position): the fetch of the
// view; body(response): its body (text or JSON); apply(body, position): put it in place.
// Returns the function that reads again (for a page's own timer, or its first read).
window.roomFollow = function (after, read, body, apply) {
  "use strict";
  var wanted = 0, loading = false, again = false, feed = null;

  // A read that failed for a reason the line says (see roomLive's failed).
  function Failure(reason) { this.reason = reason; }

  function reload() {
    if (loading) { again = true; return; }
    loading = true;
    read(wanted)
      .then(function (response) {
        if (window.roomSignedOut(response)) { return null; }
        if (!response.ok) { throw new Failure(response.status); }
        return body(response);
      }, function () { throw new Failure("unreachable"); })
      .then(function (content) {
        if (content === null) { return; }
        apply(content, wanted);
        feed.loaded();
      })
      .catch(function (error) {
        feed.failed(error instanceof Failure ? error.reason : null);
        window.setTimeout(reload, window.roomRetryMs);
      })
      .finally(function () { loading = false; if (again) { again = false; reload(); } });
  }

  function heard(event) {
    var position = parseInt(event.lastEventId, 10);
    if (!isNaN(position) && position > wanted) { wanted = position; }
    reload();
  }

  feed = window.roomLive(after, heard, reload);
  return reload;
};

// The map: the kecamatan polygons coloured by IKP band (score and reasons on hover or tap),
// the open incidents with coordinates as markers by severity, redrawn on each change heard
// on the event stream (at least at its ledger position). No basemap tiles: the room may have
// no internet, so only the polygons are drawn.
(function () {
  "use strict";
  var strings = JSON.parse(document.getElementById("strings").textContent);
  var hover = document.getElementById("hover");
  var box = document.getElementById("map");
  // Leaflet's own keyboard (the map's box a Tab stop of its own, its arrow keys panning) left
  // out: the kecamatan and the incidents are the map's one Tab stop (below), where the arrow
  // keys move from one to the next, and + and - zoom.
  var map = L.map("map", {zoomSnap: 0.25, attributionControl: false, zoomControl: false, keyboard: false});
  // The zoom buttons' titles in the page's language (Leaflet's are English).
  L.control.zoom({zoomInTitle: strings.zoom_in, zoomOutTitle: strings.zoom_out}).addTo(map);
  var shapes = null, markers = L.layerGroup().addTo(map), fitted = false;
  // Which of the kecamatan and incidents is the map's Tab stop (its key: "code:ipuh",
  // "name:incidents/..."): the first until another is reached, kept across redraws.
  var stop = null;

  function key(el) {
    var code = el.getAttribute("data-code");
    return code !== null ? "code:" + code : "name:" + el.getAttribute("data-name");
  }

  // The kecamatan in the map's order, then the incidents: the arrow keys' order.
  function items() {
    return Array.prototype.slice.call(box.querySelectorAll("path[data-code], path[data-name]"));
  }

  // Roving tabindex (WAI-ARIA Authoring Practices): one item takes the Tab key (tabindex 0),
  // the others only the arrow keys (-1), so a keyboard user passes the whole map with one Tab.
  function rove(target) {
    stop = key(target);
    items().forEach(function (el) { el.setAttribute("tabindex", el === target ? "0" : "-1"); });
  }

  function move(event) {
    var all = items(), at = all.indexOf(event.currentTarget), next = null;
    if (event.key === "ArrowRight" || event.key === "ArrowDown") { next = all[(at + 1) % all.length]; }
    else if (event.key === "ArrowLeft" || event.key === "ArrowUp") { next = all[(at - 1 + all.length) % all.length]; }
    else if (event.key === "Home") { next = all[0]; }
    else if (event.key === "End") { next = all[all.length - 1]; }
    else if (event.key === "+" || event.key === "=") { map.zoomIn(); }
    else if (event.key === "-") { map.zoomOut(); }
    else { return; }
    event.preventDefault();  // no scrolling of the page
    if (next) { rove(next); next.focus({preventScroll: true}); }
  }

  function esc(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function describe(p) {
    var lines = [p.label || p.name].concat(p.summary ? [p.summary] : []);
    return lines.concat(p.reasons && p.reasons.length ? p.reasons : [strings.none]);
  }

  // Each line (a name, an incident's title) isolated: a right-to-left override in one title
  // reverses that title only, not the lines after it.
  function tooltip(lines) {
    return lines.map(function (line) { return "<bdi>" + esc(line) + "</bdi>"; }).join("<br>");
  }

  function say(lines) {
    var parts = [];
    lines.forEach(function (line, index) {
      var part = document.createElement("bdi");
      part.textContent = line;
      if (index > 0) { parts.push(" · "); }
      parts.push(part);
    });
    hover.replaceChildren.apply(hover, parts);
  }

  function draw(data, wanted) {
    // A kecamatan or an incident reached by the keyboard keeps the focus when the map is
    // drawn again.
    var active = document.activeElement;
    var focused = active && active.matches("#map path[data-code], #map path[data-name]") ? key(active) : null;
    if (shapes) { map.removeLayer(shapes); }
    shapes = L.geoJSON(data, {
      style: function (feature) {
        return {color: "#333", weight: 1, fillColor: feature.properties.fill || "#dddddd", fillOpacity: 0.75};
      },
      onEachFeature: function (feature, shape) {
        var text = describe(feature.properties);
        shape.bindTooltip(tooltip(text), {sticky: true});
        shape.on("mouseover click", function () { say(text); });
      }
    }).addTo(map);
    if (!fitted) { map.fitBounds(shapes.getBounds()); fitted = true; }  // draws the shapes
    shapes.eachLayer(function (shape) {
      var el = shape.getElement(), p = shape.feature.properties, text = describe(p);
      el.setAttribute("data-code", p.code);
      el.setAttribute("data-band", p.band || "");
      // From the keyboard too: a kecamatan reached (the map's Tab stop, then the arrow keys)
      // says its score and reasons as a pointer over it does (Leaflet opens its tooltip).
      el.setAttribute("role", "button");
      el.setAttribute("aria-label", text[0]);
      el.addEventListener("focus", function () { rove(el); say(text); });
      el.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); say(text); return; }
        move(event);
      });
    });
    markers.clearLayers();
    data.markers.forEach(function (m) {
      var marker = L.circleMarker(m.point, {radius: 8, color: "#000", weight: 1, fillColor: m.fill, fillOpacity: 0.9});
      marker.bindTooltip(tooltip([m.title, m.label]));
      marker.on("click", function () { window.location.href = "/" + m.name; });
      markers.addLayer(marker);
      var el = marker.getElement();
      el.setAttribute("data-name", m.name);
      el.setAttribute("data-severity", m.severity);
      // Reached with the arrow keys after the kecamatan, Enter opens the incident.
      el.setAttribute("role", "link");
      el.setAttribute("aria-label", m.title);
      // The line under the map says the incident too (it kept the last kecamatan's).
      el.addEventListener("focus", function () { rove(el); say([m.title, m.label]); });
      el.addEventListener("keydown", function (event) {
        if (event.key === "Enter") { window.location.href = "/" + m.name; return; }
        move(event);
      });
    });
    // The group named for a screen reader, with how to move in it.
    var group = box.querySelector(".leaflet-overlay-pane svg");
    if (group) { group.setAttribute("role", "group"); group.setAttribute("aria-label", strings.features); }
    var all = items();
    var chosen = all.filter(function (el) { return key(el) === stop; })[0] || all[0];
    if (chosen) { rove(chosen); }
    var again = all.filter(function (el) { return key(el) === focused; })[0];
    if (again) { again.focus({preventScroll: true}); }
    box.dataset.ready = String(data.features.length);
    box.dataset.position = String(wanted);
  }

  var reload = window.roomFollow(
    parseInt(box.dataset.after, 10) || 0,
    function (wanted) {
      return fetch("/map/data.json?min_position=" + wanted, {credentials: "same-origin"});
    },
    function (response) { return response.json(); },
    draw
  );
  reload();
})();

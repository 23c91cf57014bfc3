// The map: the kecamatan polygons coloured by IKP band (score and reasons on hover or tap),
// the open incidents with coordinates as markers by severity, redrawn on each change heard
// on the event stream (at least at its ledger position). No basemap tiles: the room may have
// no internet, so only the polygons are drawn.
(function () {
  "use strict";
  var strings = JSON.parse(document.getElementById("strings").textContent);
  var hover = document.getElementById("hover");
  var box = document.getElementById("map");
  var map = L.map("map", {zoomSnap: 0.25, attributionControl: false, zoomControl: false});
  // The zoom buttons' titles in the page's language (Leaflet's are English).
  L.control.zoom({zoomInTitle: strings.zoom_in, zoomOutTitle: strings.zoom_out}).addTo(map);
  var shapes = null, markers = L.layerGroup().addTo(map), fitted = false;

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
    // A kecamatan reached by the keyboard keeps the focus when the map is drawn again.
    var active = document.activeElement;
    var focused = active && box.contains(active) ? active.getAttribute("data-code") : null;
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
      // From the keyboard too: each kecamatan is a stop of the Tab key, and one reached says
      // its score and reasons as a pointer over it does (Leaflet opens its tooltip).
      el.setAttribute("tabindex", "0");
      el.setAttribute("role", "button");
      el.setAttribute("aria-label", text[0]);
      el.addEventListener("focus", function () { say(text); });
      el.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); say(text); }
      });
    });
    if (focused) {
      var again = box.querySelector('path[data-code="' + CSS.escape(focused) + '"]');
      if (again) { again.focus({preventScroll: true}); }
    }
    markers.clearLayers();
    data.markers.forEach(function (m) {
      var marker = L.circleMarker(m.point, {radius: 8, color: "#000", weight: 1, fillColor: m.fill, fillOpacity: 0.9});
      marker.bindTooltip(tooltip([m.title, m.label]));
      marker.on("click", function () { window.location.href = "/" + m.name; });
      markers.addLayer(marker);
      var el = marker.getElement();
      el.setAttribute("data-name", m.name);
      el.setAttribute("data-severity", m.severity);
      // Reached with the Tab key (as Leaflet's markers are), Enter opens the incident.
      el.setAttribute("tabindex", "0");
      el.setAttribute("role", "link");
      el.setAttribute("aria-label", m.title);
      el.addEventListener("keydown", function (event) {
        if (event.key === "Enter") { window.location.href = "/" + m.name; }
      });
    });
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

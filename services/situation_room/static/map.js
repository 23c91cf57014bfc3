// The map: the kecamatan polygons coloured by IKP band, score and reasons on hover or tap.
// No basemap tiles (the room may have no internet): only the polygons are drawn.
(function () {
  "use strict";
  var strings = JSON.parse(document.getElementById("strings").textContent);
  var hover = document.getElementById("hover");
  var map = L.map("map", {zoomSnap: 0.25, attributionControl: false});

  function esc(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function describe(p) {
    var lines = [p.label || p.name, strings.score + " " + p.score + " (" + strings.band + " " + p.band + ", " + p.incidents + " " + strings.incidents + ")"];
    return lines.concat(p.reasons && p.reasons.length ? p.reasons : [strings.none]);
  }

  fetch("/map/data.json", {credentials: "same-origin"})
    .then(function (response) { return response.json(); })
    .then(function (data) {
      var layer = L.geoJSON(data, {
        style: function (feature) {
          return {color: "#333", weight: 1, fillColor: feature.properties.fill || "#dddddd", fillOpacity: 0.75};
        },
        onEachFeature: function (feature, shape) {
          var text = describe(feature.properties);
          shape.bindTooltip(text.map(esc).join("<br>"), {sticky: true});
          shape.on("mouseover click", function () { hover.textContent = text.join(" · "); });
        }
      }).addTo(map);
      map.fitBounds(layer.getBounds());  // draws the shapes (a map without a view draws none)
      layer.eachLayer(function (shape) {
        var el = shape.getElement(), p = shape.feature.properties;
        el.setAttribute("data-code", p.code);
        el.setAttribute("data-band", p.band || "");
      });
      document.getElementById("map").dataset.ready = String(data.features.length);
    });
})();

// The report form: the desa of the chosen kecamatan; one submission per page (the request id
// in the form makes a repeated one record nothing new anyway).
(function () {
  "use strict";
  var desa = JSON.parse(document.getElementById("desa-data").textContent);
  var kecamatan = document.getElementById("kecamatan");
  var select = document.getElementById("desa");
  var unknown = select.options[0].cloneNode(true);

  function fill() {
    select.replaceChildren(unknown.cloneNode(true));
    (desa[kecamatan.value] || []).forEach(function (name) {
      var option = document.createElement("option");
      option.value = name; option.textContent = name;
      select.appendChild(option);
    });
  }
  kecamatan.addEventListener("change", fill);
  fill();
  // A form shown again (refused) keeps the desa chosen.
  if (select.dataset.chosen) { select.value = select.dataset.chosen; }
  // The witnesses: the first row and those filled in shown, the others one click away
  // (without the script, every row is shown).
  var rows = Array.prototype.slice.call(document.querySelectorAll("fieldset.witness"));
  var another = document.getElementById("another-witness");
  function filled(row) {
    return Array.prototype.some.call(row.querySelectorAll("input"), function (input) { return input.value !== ""; });
  }
  var last = 0;
  rows.forEach(function (row, index) { if (filled(row)) { last = index; } });
  rows.forEach(function (row, index) { row.hidden = index > last; });
  function offer() { another.hidden = rows.every(function (row) { return !row.hidden; }); }
  another.addEventListener("click", function () {
    var next = rows.filter(function (row) { return row.hidden; })[0];
    if (next) { next.hidden = false; next.querySelector("input").focus(); }
    offer();
  });
  offer();
  // The point: a click on the map fills latitude and longitude (and the kecamatan clicked).
  var pick = document.getElementById("pick");
  if (pick && window.L) {
    var strings = JSON.parse(document.getElementById("strings").textContent);
    var map = L.map(pick, {zoomSnap: 0.25, attributionControl: false, zoomControl: false});
    L.control.zoom({zoomInTitle: strings.zoom_in, zoomOutTitle: strings.zoom_out}).addTo(map);
    var marker = null;
    var latitude = document.getElementById("latitude");
    var longitude = document.getElementById("longitude");
    // A map that cannot be loaded (the ledger away, a session ended) is said under it: the
    // point can still be typed. Before, the map stayed blank without a word.
    fetch("/map/data.json", {credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("the map's data: HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        var shapes = L.geoJSON(data, {
          style: {color: "#333", weight: 1, fillColor: "#cfd8dc", fillOpacity: 0.6},
          onEachFeature: function (feature, shape) {
            shape.on("click", function () {
              if (desa[feature.properties.code] !== undefined && kecamatan.value !== feature.properties.code) {
                kecamatan.value = feature.properties.code;
                fill();
              }
            });
          }
        }).addTo(map);
        map.fitBounds(shapes.getBounds());
        shapes.eachLayer(function (shape) { shape.getElement().setAttribute("data-code", shape.feature.properties.code); });
        pick.dataset.ready = "1";
      })
      .catch(function () {
        pick.hidden = true;
        document.getElementById("pick-failed").hidden = false;
        pick.dataset.ready = "failed";
      });
    map.on("click", function (event) {
      var point = event.latlng;
      latitude.value = point.lat.toFixed(5);
      longitude.value = point.lng.toFixed(5);
      if (marker) { marker.setLatLng(point); } else { marker = L.marker(point, {alt: strings.point}).addTo(map); }
    });
  }
  var sent = false;
  document.getElementById("report").addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
    document.getElementById("submit").disabled = true;
  });
})();

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
  var sent = false;
  document.getElementById("report").addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
    document.getElementById("submit").disabled = true;
  });
})();

// The console's only script (vendored, no CDN): forms with data-api post their fields as JSON
// to the API with the page's CSRF token, then reload (or go to data-next). The button stays
// disabled while a request is in flight; the server refuses a second send anyway (409).
(function () {
  "use strict";
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  function fields(form) {
    var data = {};
    new FormData(form).forEach(function (value, key) { data[key] = value; });
    return data;
  }
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.dataset || !form.dataset.api) { return; }
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { return; }
    var button = form.querySelector('button[type="submit"]');
    var error = form.querySelector(".form-error");
    if (button) { button.disabled = true; }
    if (error) { error.textContent = ""; }
    fetch(form.dataset.api, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(fields(form))
    }).then(function (response) {
      if (response.ok || response.redirected) {
        window.location.assign(form.dataset.next || window.location.href);
        return null;
      }
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (error) { error.textContent = body.message || ("Failed: HTTP " + response.status); }
        if (button) { button.disabled = false; }
      });
    }).catch(function () {
      if (error) { error.textContent = "The console could not be reached. Try again."; }
      if (button) { button.disabled = false; }
    });
  });
})();

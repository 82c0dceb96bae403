// Live regions: an element with data-live="URL" is refreshed from that URL every data-refresh
// seconds. The server renders (and escapes) the HTML; this file only swaps it in. A region the
// user is typing in is left alone until they leave it, so a refresh never eats their input.
(function () {
  "use strict";
  function refresh(el) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
    fetch(el.dataset.live, { headers: { "X-Console-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }  // signed out: to the sign-in page
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && !(el.contains(document.activeElement) && document.activeElement !== document.body)) {
          el.innerHTML = html;
          el.dataset.updated = String(Date.now());
        }
      })
      .catch(function () { /* gateway restarting: try again next tick */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var seconds = parseFloat(el.dataset.refresh || "2");
      setInterval(function () { if (!document.hidden) refresh(el); }, Math.max(seconds, 0.5) * 1000);
    });
  });
})();

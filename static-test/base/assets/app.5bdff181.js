// graysplit fixture: base build. Announces its build id so tests can see which build served it.
(function () {
  var build = "base-2026.11.1";
  window.__BUILD__ = build;
  window.__ASSETS__ = (window.__ASSETS__ || []).concat([{ kind: "js", build: build }]);
  function mark() {
    document.documentElement.setAttribute("data-build", build);
    var el = document.getElementById("js-build");
    if (el) el.textContent = build;
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mark); else mark();
})();

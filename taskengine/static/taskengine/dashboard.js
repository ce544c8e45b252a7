/* taskengine dashboard chart: finished jobs per minute over the last hour, drawn as an
 * inline SVG stacked bar chart from GET <data-summary-url> (the JSON API's summary).
 * No libraries, no CDN. Only reads; refreshes every 15 s while the page is open. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var SERIES = ["succeeded", "failed", "cancelled"];
  var W = 720, H = 180, PAD = 28;

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function draw(box, throughput) {
    var buckets = throughput.buckets;
    var max = 1;
    buckets.forEach(function (b) {
      max = Math.max(max, SERIES.reduce(function (s, k) { return s + b[k]; }, 0));
    });
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: "100%", role: "img",
                         "class": "te-chart", "aria-label": "finished jobs per minute"});
    var slot = (W - PAD) / buckets.length;
    var plotH = H - PAD;
    svg.appendChild(el("line", {x1: PAD, y1: plotH, x2: W, y2: plotH, "class": "te-axis"}));
    svg.appendChild(el("text", {x: 2, y: 12, "class": "te-axis-label"}, String(max)));
    svg.appendChild(el("text", {x: 2, y: plotH, "class": "te-axis-label"}, "0"));
    buckets.forEach(function (b, i) {
      var y = plotH;
      SERIES.forEach(function (k) {
        if (!b[k]) { return; }
        var h = (b[k] / max) * (plotH - 14);
        y -= h;
        var rect = el("rect", {x: PAD + i * slot + 1, y: y, width: Math.max(1, slot - 2), height: h,
                               "class": "te-bar te-" + k, "data-minute": b.start, "data-count": b[k]});
        rect.appendChild(el("title", {}, b.start + ": " + b[k] + " " + k));
        svg.appendChild(rect);
      });
    });
    svg.appendChild(el("text", {x: PAD, y: H - 6, "class": "te-axis-label"}, "-60 min"));
    svg.appendChild(el("text", {x: W - 30, y: H - 6, "class": "te-axis-label"}, "now"));
    box.replaceChildren(svg);
    box.setAttribute("data-loaded", "true");
  }

  function refresh(box) {
    fetch(box.getAttribute("data-summary-url"), {credentials: "same-origin",
                                                  headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (summary) {
        draw(box, summary.throughput);
        var oldest = document.getElementById("te-oldest");
        if (oldest) {
          var age = summary.oldest_queued_age_seconds;
          oldest.textContent = age === null ? "none" : age.toFixed(1) + " s";
        }
      })
      .catch(function (err) { box.textContent = "chart unavailable: " + err.message; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("te-chart");
    if (!box) { return; }
    refresh(box);
    setInterval(function () { refresh(box); }, 15000);
  });
})();

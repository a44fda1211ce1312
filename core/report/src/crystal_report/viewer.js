/* crystal-report: a minimal 3-D crystal viewer on a 2-D canvas (no library, no network).
   Each <canvas class="xtal" data-src="ID"> draws the JSON in <script id="ID">:
   {cell: [a, b, c] (Å), atoms: [[x, y, z, element index]], colors: [...], radii: [...] (Å)}.
   Drag (mouse or touch) to rotate; the mouse wheel zooms. */
(function () {
  "use strict";
  function mul(a, b) {
    var r = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
    for (var i = 0; i < 3; i++) for (var j = 0; j < 3; j++) for (var k = 0; k < 3; k++) r[i][j] += a[i][k] * b[k][j];
    return r;
  }
  function rotX(t) { var c = Math.cos(t), s = Math.sin(t); return [[1, 0, 0], [0, c, -s], [0, s, c]]; }
  function rotY(t) { var c = Math.cos(t), s = Math.sin(t); return [[c, 0, s], [0, 1, 0], [-s, 0, c]]; }
  function apply(m, v) {
    return [m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
            m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
            m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2]];
  }
  function shade(hex, f) {
    var n = parseInt(hex.slice(1), 16), r = (n >> 16) & 255, g = (n >> 8) & 255, b = n & 255;
    function c(x) { return Math.max(0, Math.min(255, Math.round(f > 1 ? x + (255 - x) * (f - 1) : x * f))); }
    return "rgb(" + c(r) + "," + c(g) + "," + c(b) + ")";
  }
  function setup(canvas) {
    var d = JSON.parse(document.getElementById(canvas.getAttribute("data-src")).textContent);
    var ctx = canvas.getContext("2d");
    var a = d.cell[0], b = d.cell[1], c = d.cell[2];
    var centre = [0, 1, 2].map(function (i) { return (a[i] + b[i] + c[i]) / 2; });
    var corners = [];
    for (var i = 0; i < 8; i++) {
      var p = [0, 0, 0];
      for (var k = 0; k < 3; k++) p[k] = (i & 1 ? a[k] : 0) + (i & 2 ? b[k] : 0) + (i & 4 ? c[k] : 0) - centre[k];
      corners.push(p);
    }
    var edges = [];
    for (var i2 = 0; i2 < 8; i2++) for (var bit = 1; bit < 8; bit <<= 1) if (!(i2 & bit)) edges.push([i2, i2 | bit]);
    var extent = 0;
    corners.forEach(function (p) { extent = Math.max(extent, Math.hypot(p[0], p[1], p[2])); });
    var R = mul(rotX(-0.35), rotY(0.55)), zoom = 1;
    function draw() {
      var w = canvas.width, h = canvas.height, s = zoom * 0.45 * Math.min(w, h) / Math.max(extent, 1e-6);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, w, h);
      function proj(p) { var q = apply(R, p); return [w / 2 + s * q[0], h / 2 - s * q[1], q[2]]; }
      ctx.strokeStyle = "#444444";
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      edges.forEach(function (e) {
        var p = proj(corners[e[0]]), q = proj(corners[e[1]]);
        ctx.moveTo(p[0], p[1]);
        ctx.lineTo(q[0], q[1]);
      });
      ctx.stroke();
      var pts = d.atoms.map(function (t) {
        var p = proj([t[0] - centre[0], t[1] - centre[1], t[2] - centre[2]]);
        return [p[0], p[1], p[2], t[3]];
      });
      pts.sort(function (u, v) { return u[2] - v[2]; });
      pts.forEach(function (p) {
        var r = Math.max(2, s * d.radii[p[3]]), col = d.colors[p[3]];
        var g = ctx.createRadialGradient(p[0] - r / 3, p[1] - r / 3, r / 6, p[0], p[1], r);
        g.addColorStop(0, shade(col, 1.45));
        g.addColorStop(1, shade(col, 0.75));
        ctx.beginPath();
        ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
        ctx.fillStyle = g;
        ctx.fill();
        ctx.strokeStyle = "rgba(0,0,0,0.35)";
        ctx.lineWidth = 0.8;
        ctx.stroke();
      });
      canvas.setAttribute("data-rendered", String(pts.length));
    }
    var last = null;
    function start(x, y) { last = [x, y]; }
    function move(x, y) {
      if (!last) return;
      R = mul(rotX((y - last[1]) * 0.01), mul(rotY((x - last[0]) * 0.01), R));
      last = [x, y];
      draw();
    }
    canvas.addEventListener("mousedown", function (e) { start(e.clientX, e.clientY); e.preventDefault(); });
    window.addEventListener("mousemove", function (e) { move(e.clientX, e.clientY); });
    window.addEventListener("mouseup", function () { last = null; });
    canvas.addEventListener("touchstart", function (e) { var t = e.touches[0]; start(t.clientX, t.clientY); }, { passive: true });
    canvas.addEventListener("touchmove", function (e) { var t = e.touches[0]; move(t.clientX, t.clientY); e.preventDefault(); }, { passive: false });
    canvas.addEventListener("touchend", function () { last = null; });
    canvas.addEventListener("wheel", function (e) {
      zoom = Math.max(0.2, Math.min(5, zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
      draw();
      e.preventDefault();
    }, { passive: false });
    draw();
  }
  Array.prototype.forEach.call(document.querySelectorAll("canvas.xtal"), function (c) {
    try { setup(c); } catch (err) { window.__reportError(String(err)); }
  });
})();

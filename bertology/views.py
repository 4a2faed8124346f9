"""Self-contained interactive views (HTML + SVG + vanilla JS, no external libraries, no network).

``head_view_html`` replaces bertviz's head view, which loads require.js, d3 and jQuery from a CDN and
renders blank offline. The page it returns works in JupyterLab and the classic notebook (trusted
notebooks run the script; untrusted ones show a short note instead) and in nbconvert's HTML export.

The attention is embedded compactly: rounded to ``decimals``, stored as integers ``round(a * 10**decimals)``
(one byte each for ``decimals <= 2``, two bytes little-endian otherwise), base64-encoded, inside a
``<script type="application/json">`` block; ``decode_view_data`` reads it back.
"""
from __future__ import annotations

import base64
import html
import json
import re
import uuid

import numpy as np

# One colour per head (cycled), the colour-blind-safe palette of seaborn's "colorblind" plus extras.
HEAD_COLORS = (
    "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161",
    "#fbafe4", "#949494", "#ece133", "#56b4e9", "#8c564b", "#17becf",
)
# tolerant of attribute order: nbconvert re-serializes the page with BeautifulSoup
_DATA_RE = re.compile(r'<script\b[^>]*\bid="([^"]+)-data"[^>]*>(.*?)</script>', re.DOTALL)


def encode_attention(attention, decimals: int = 2) -> dict:
    """The JSON-ready payload of a (layers, heads, U, U) attention array, rounded to ``decimals``."""
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 4 or att.shape[2] != att.shape[3]:
        raise ValueError(f"attention must be (layers, heads, U, U), got shape {att.shape}")
    if not 0 <= int(decimals) <= 4:
        raise ValueError("decimals must be between 0 and 4")
    scale = 10 ** int(decimals)
    q = np.clip(np.rint(np.nan_to_num(att) * scale), 0, scale)
    dtype = "u1" if scale <= 255 else "u2"
    raw = q.astype("<" + dtype).tobytes()
    layers, heads, n, _ = att.shape
    return {"v": 1, "layers": layers, "heads": heads, "n": n, "scale": scale, "dtype": dtype,
            "data": base64.b64encode(raw).decode("ascii")}


def decode_view_data(payload: dict) -> np.ndarray:
    """Inverse of ``encode_attention``: the rounded attention as floats of shape (layers, heads, U, U)."""
    raw = base64.b64decode(payload["data"])
    q = np.frombuffer(raw, dtype="<" + payload["dtype"])
    shape = (payload["layers"], payload["heads"], payload["n"], payload["n"])
    return q.reshape(shape).astype(np.float64) / payload["scale"]


def extract_view_data(page: str) -> dict[str, dict]:
    """Every view's embedded payload in an HTML page, by element id."""
    return {m.group(1): json.loads(m.group(2)) for m in _DATA_RE.finditer(page)}


def _json_for_script(obj) -> str:
    # safe inside <script>: no "</script>", no "<!--", no U+2028/2029 surprises
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _view_payload(attention, labels, decimals, element_id, prefix):
    """The embedded data of a view and its element id (fresh and unique unless given)."""
    labels = [str(t) for t in labels]
    payload = encode_attention(attention, decimals)
    if len(labels) != payload["n"]:
        raise ValueError(f"{len(labels)} labels for {payload['n']} tokens")
    payload["labels"] = labels
    vid = element_id or f"{prefix}-{uuid.uuid4().hex[:12]}"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", vid):
        raise ValueError(f"bad element id {vid!r}")
    return payload, vid


def head_view_html(attention, labels, decimals: int = 2, sentence_b_start: int | None = None,
                   element_id: str | None = None, title: str | None = None) -> str:
    """Interactive head view of one input's ``attention[layer, head, from, to]`` as self-contained HTML.

    Pick a layer, click heads to toggle them (double-click: only that head), hover a token on the left
    to see where it attends (on the right: who attends to it). Buttons download the current view as
    SVG or PNG. Layers and heads are shown 1-indexed. ``element_id`` defaults to a fresh unique id.
    """
    payload, vid = _view_payload(attention, labels, decimals, element_id, "bv")
    if sentence_b_start is not None:
        payload["b"] = int(sentence_b_start)
    payload["colors"] = list(HEAD_COLORS)
    caption = html.escape(title or "Head view")
    return (
        f'<div id="{vid}" class="bv-view">'
        f"<style>{_CSS.replace('#ID', '#' + vid)}</style>"
        f'<div class="bv-bar"><b>{caption}</b> <label>layer <select class="bv-layer"></select></label>'
        '<span class="bv-heads"></span>'
        '<button type="button" class="bv-all">all</button><button type="button" class="bv-none">none</button>'
        '<button type="button" class="bv-svg">SVG</button><button type="button" class="bv-png">PNG</button></div>'
        '<div class="bv-fallback">Interactive head view: run (or trust) the notebook to display it.</div>'
        '<svg class="bv-svg-root" width="0" height="0"></svg>'
        '<div class="bv-help">Hover a token: left = where it attends, right = who attends to it. '
        'Click a head to toggle it, double-click to show it alone.</div>'
        f'<script type="application/json" id="{vid}-data">{_json_for_script(payload)}</script>'
        f"<script>{_JS.replace('__ID__', vid)}</script>"
        "</div>"
    )


_CSS = """
#ID{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:.5em 0}
#ID .bv-bar{display:flex;flex-wrap:wrap;gap:.4em;align-items:center;margin-bottom:.4em}
#ID .bv-bar button,#ID .bv-bar select{font:inherit;padding:1px 6px}
#ID .bv-head{display:inline-block;width:1.9em;text-align:center;border-radius:3px;cursor:pointer;
 color:#fff;font-size:11px;user-select:none;border:2px solid transparent}
#ID .bv-head.off{opacity:.25}
#ID .bv-help{color:#59636e;font-size:11px}
#ID .bv-fallback{color:#59636e;font-style:italic}
#ID[data-bv-rendered] .bv-fallback{display:none}
#ID svg text{cursor:default}
"""

# Plain ES5-ish JavaScript; no modules, no globals besides nothing (an IIFE).
_JS = r"""
(function () {
  var ID = "__ID__", NS = ["http", "//www.w3.org/2000/svg"].join(":"), tries = 0;  // no URL literal in the page
  // our own container: the script's parent (robust when a notebook is shown twice), else by id
  var me = document.currentScript, host = me && me.parentNode && me.parentNode.id === ID ? me.parentNode : null;
  function start() {
    var root = host || document.getElementById(ID);
    if (!root) { if (tries++ < 50) { setTimeout(start, 100); } return; }
    if (root.getAttribute("data-bv-rendered")) { return; }
    var node = root.querySelector('script[type="application/json"]');
    var d = JSON.parse(node.textContent);
    var bin = atob(d.data), L = d.layers, H = d.heads, n = d.n, scale = d.scale;
    var vals = new Float32Array(L * H * n * n), k, i;
    if (d.dtype === "u1") {
      for (k = 0; k < vals.length; k++) { vals[k] = bin.charCodeAt(k) / scale; }
    } else {
      for (k = 0; k < vals.length; k++) { vals[k] = (bin.charCodeAt(2 * k) | (bin.charCodeAt(2 * k + 1) << 8)) / scale; }
    }
    var labels = d.labels, colors = d.colors;
    var svg = root.querySelector(".bv-svg-root");
    var layerSel = root.querySelector(".bv-layer"), headBox = root.querySelector(".bv-heads");
    var state = { layer: 0, heads: [], focus: null };
    for (i = 0; i < H; i++) { state.heads.push(true); }
    for (i = 0; i < L; i++) {
      var o = document.createElement("option"); o.value = i; o.textContent = String(i + 1); layerSel.appendChild(o);
    }
    var headEls = [];
    function color(h) { return colors[h % colors.length]; }
    for (i = 0; i < H; i++) {
      (function (h) {
        var s = document.createElement("span");
        s.className = "bv-head"; s.textContent = String(h + 1); s.style.background = color(h);
        s.title = "head " + (h + 1) + " (click: toggle, double-click: only this head)";
        s.addEventListener("click", function () { state.heads[h] = !state.heads[h]; draw(); });
        s.addEventListener("dblclick", function () {
          for (var j = 0; j < H; j++) { state.heads[j] = j === h; } draw();
        });
        headBox.appendChild(s); headEls.push(s);
      })(i);
    }
    layerSel.addEventListener("change", function () { state.layer = +layerSel.value; draw(); });
    root.querySelector(".bv-all").addEventListener("click", function () { for (var j = 0; j < H; j++) { state.heads[j] = true; } draw(); });
    root.querySelector(".bv-none").addEventListener("click", function () { for (var j = 0; j < H; j++) { state.heads[j] = false; } draw(); });

    // geometry
    var maxLen = 1; for (i = 0; i < n; i++) { maxLen = Math.max(maxLen, labels[i].length); }
    var colW = Math.min(160, 12 + 7.2 * maxLen), gap = 180, rowH = 18, top = 22;
    var sw = Math.max(1, Math.min(4, Math.floor(48 / H))), S = sw * H + 2;  // weight stripes, one per head
    var xL = colW, xR = colW + gap + 2 * S, W = 2 * colW + gap + 2 * S, Hgt = top + n * rowH + 6;
    svg.setAttribute("width", W); svg.setAttribute("height", Hgt);
    svg.setAttribute("viewBox", "0 0 " + W + " " + Hgt);
    function el(name, attrs, parent) {
      var e = document.createElementNS(NS, name);
      for (var a in attrs) { e.setAttribute(a, attrs[a]); }
      if (parent) { parent.appendChild(e); }
      return e;
    }
    el("rect", { x: 0, y: 0, width: W, height: Hgt, fill: "#fff" }, svg);
    var title = el("text", { x: W / 2, y: 14, "text-anchor": "middle", "font-size": 12, fill: "#59636e",
      "font-family": "sans-serif" }, svg);
    var lineG = el("g", { "class": "bv-lines" }, svg);
    var boxG = el("g", { "class": "bv-boxes" }, svg);
    var textG = el("g", { "font-size": 12, "font-family": "sans-serif" }, svg);
    var left = [], right = [];
    function y(t) { return top + t * rowH + rowH / 2; }
    for (i = 0; i < n; i++) {
      (function (t) {
        var a = el("text", { x: xL - 6, y: y(t) + 4, "text-anchor": "end", fill: "#1f2328" }, textG);
        a.textContent = labels[t];
        var b = el("text", { x: xR + 6, y: y(t) + 4, "text-anchor": "start", fill: "#1f2328" }, textG);
        b.textContent = labels[t];
        a.addEventListener("mouseenter", function () { state.focus = { side: 0, t: t }; draw(); });
        b.addEventListener("mouseenter", function () { state.focus = { side: 1, t: t }; draw(); });
        a.addEventListener("mouseleave", function () { state.focus = null; draw(); });
        b.addEventListener("mouseleave", function () { state.focus = null; draw(); });
        left.push(a); right.push(b);
      })(i);
    }
    if (d.b !== undefined && d.b !== null && d.b > 0 && d.b < n) {
      el("line", { x1: 2, x2: W - 2, y1: top + d.b * rowH, y2: top + d.b * rowH, stroke: "#d0d7de",
        "stroke-dasharray": "3,3" }, svg);
    }
    function at(l, h, f, t) { return vals[((l * H + h) * n + f) * n + t]; }
    var LEVELS = 10;
    function draw() {
      var l = state.layer, f = state.focus, h, s, t, w, count = 0, nh = 0;
      while (lineG.firstChild) { lineG.removeChild(lineG.firstChild); }
      while (boxG.firstChild) { boxG.removeChild(boxG.firstChild); }
      for (h = 0; h < H; h++) { headEls[h].className = "bv-head" + (state.heads[h] ? "" : " off"); if (state.heads[h]) { nh++; } }
      for (i = 0; i < n; i++) {
        left[i].setAttribute("font-weight", f && f.side === 0 && f.t === i ? "bold" : "normal");
        right[i].setAttribute("font-weight", f && f.side === 1 && f.t === i ? "bold" : "normal");
      }
      for (h = 0; h < H; h++) {
        if (!state.heads[h]) { continue; }
        // one path per opacity level keeps the DOM (and the SVG export) small
        var paths = [];
        for (k = 0; k <= LEVELS; k++) { paths.push(""); }
        for (s = 0; s < n; s++) {
          if (f && f.side === 0 && f.t !== s) { continue; }
          for (t = 0; t < n; t++) {
            if (f && f.side === 1 && f.t !== t) { continue; }
            w = at(l, h, s, t);
            if (w <= 0) { continue; }
            k = Math.max(1, Math.round(w * LEVELS));
            paths[k] += "M" + (xL + S) + " " + y(s) + "L" + (xR - S) + " " + y(t);
            count++;
            if (f) {  // weights as stripes next to the tokens on the other side, one stripe per head
              var bx = f.side === 0 ? xR - S + 1 + h * sw : xL + 1 + h * sw, other = f.side === 0 ? t : s;
              el("rect", { x: bx, y: y(other) - rowH / 2 + 1, width: sw, height: rowH - 2,
                fill: color(h), "fill-opacity": Math.sqrt(Math.min(1, w)).toFixed(2) }, boxG);
            }
          }
        }
        for (k = 1; k <= LEVELS; k++) {
          if (paths[k]) {
            el("path", { d: paths[k], stroke: color(h), "stroke-width": f ? 2 : 1.5, fill: "none",
              "stroke-opacity": (f ? Math.min(1, 1.5 * k / LEVELS) : k / LEVELS).toFixed(2) }, lineG);
          }
        }
      }
      title.textContent = "layer " + (l + 1) + ", " + nh + " of " + H + " heads" +
        (f ? (f.side === 0 ? ": from \u201c" : ": to \u201c") + labels[f.t] + "\u201d" : "");
      root.setAttribute("data-bv-lines", String(count));
      root.setAttribute("data-bv-paths", String(lineG.childNodes.length));
    }
    function download(name, url) {
      var a = document.createElement("a"); a.href = url; a.download = name;
      document.body.appendChild(a); a.click(); document.body.removeChild(a);
    }
    function svgText() {
      var clone = svg.cloneNode(true);
      clone.setAttribute("xmlns", NS);
      return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(clone);
    }
    var base = "head_view_layer";
    root.querySelector(".bv-svg").addEventListener("click", function () {
      var url = URL.createObjectURL(new Blob([svgText()], { type: "image/svg+xml" }));
      download(base + (state.layer + 1) + ".svg", url);
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    });
    root.querySelector(".bv-png").addEventListener("click", function () {
      var img = new Image(), ratio = 2;
      img.onload = function () {
        var c = document.createElement("canvas");
        c.width = W * ratio; c.height = Hgt * ratio;
        var ctx = c.getContext("2d"); ctx.scale(ratio, ratio); ctx.drawImage(img, 0, 0);
        download(base + (state.layer + 1) + ".png", c.toDataURL("image/png"));
      };
      img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText());
    });
    draw();
    root.setAttribute("data-bv-rendered", "1");
  }
  start();
})();
"""


def model_view_html(attention, labels, decimals: int = 2, element_id: str | None = None,
                    title: str | None = None, tile: int = 110) -> str:
    """All heads of one input at a glance (cf. bertviz's model view): a layers x heads grid of small
    attention matrices drawn on canvases (rows attend to columns). Click a tile to enlarge it with
    token labels; the PNG button downloads the grid. Same compact embedding as :func:`head_view_html`."""
    payload, vid = _view_payload(attention, labels, decimals, element_id, "mv")
    payload["tile"] = int(tile)
    caption = html.escape(title or "Model view (rows attend to columns; layer-head, 1-indexed)")
    return (
        f'<div id="{vid}" class="mv-view">'
        f"<style>{_MV_CSS.replace('#ID', '#' + vid)}</style>"
        f'<div class="mv-bar"><b>{caption}</b> <button type="button" class="mv-png">PNG</button></div>'
        '<div class="bv-fallback">Interactive model view: run (or trust) the notebook to display it.</div>'
        '<div class="mv-grid"></div><div class="mv-zoom"></div>'
        f'<script type="application/json" id="{vid}-data">{_json_for_script(payload)}</script>'
        f"<script>{_MV_JS.replace('__ID__', vid)}</script>"
        "</div>"
    )


_MV_CSS = """
#ID{font:12px/1.3 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:.5em 0}
#ID .mv-grid{display:grid;gap:4px;align-items:center}
#ID .mv-grid canvas{border:1px solid #d0d7de;cursor:zoom-in;image-rendering:pixelated}
#ID .mv-lab{font-size:11px;color:#59636e;text-align:center}
#ID .bv-fallback{color:#59636e;font-style:italic}
#ID[data-mv-rendered] .bv-fallback{display:none}
#ID .mv-zoom canvas{border:1px solid #d0d7de;margin-top:6px}
"""

_MV_JS = r"""
(function () {
  var ID = "__ID__", tries = 0;
  var me = document.currentScript, host = me && me.parentNode && me.parentNode.id === ID ? me.parentNode : null;
  function start() {
    var root = host || document.getElementById(ID);
    if (!root) { if (tries++ < 50) { setTimeout(start, 100); } return; }
    if (root.getAttribute("data-mv-rendered")) { return; }
    var d = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
    var bin = atob(d.data), L = d.layers, H = d.heads, n = d.n, scale = d.scale, T = d.tile;
    function val(l, h, i, j) {
      var k = ((l * H + h) * n + i) * n + j;
      return d.dtype === "u1" ? bin.charCodeAt(k) / scale
        : (bin.charCodeAt(2 * k) | (bin.charCodeAt(2 * k + 1) << 8)) / scale;
    }
    function paint(canvas, l, h, size, withLabels) {
      var pad = withLabels ? 90 : 0, cell = size / n;
      canvas.width = size + pad; canvas.height = size + pad;
      var ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      for (var i = 0; i < n; i++) {
        for (var j = 0; j < n; j++) {
          var v = val(l, h, i, j);
          if (v > 0) { ctx.fillStyle = "rgba(1,115,178," + v + ")"; ctx.fillRect(pad + j * cell, pad + i * cell, cell + 0.5, cell + 0.5); }
        }
      }
      if (withLabels) {
        ctx.fillStyle = "#1f2328"; ctx.font = Math.min(11, cell) + "px sans-serif"; ctx.textAlign = "right";
        for (i = 0; i < n; i++) { ctx.fillText(d.labels[i].slice(0, 12), pad - 3, pad + (i + 0.75) * cell); }
        for (j = 0; j < n; j++) {
          ctx.save(); ctx.translate(pad + (j + 0.75) * cell, pad - 3); ctx.rotate(-Math.PI / 2);
          ctx.textAlign = "left"; ctx.fillText(d.labels[j].slice(0, 12), 0, 0); ctx.restore();
        }
      }
    }
    var grid = root.querySelector(".mv-grid"), zoom = root.querySelector(".mv-zoom"), painted = 0;
    grid.style.gridTemplateColumns = "2.5em repeat(" + H + ", " + (T + 2) + "px)";
    grid.appendChild(document.createElement("span"));
    for (var h = 0; h < H; h++) { var s = document.createElement("span"); s.className = "mv-lab"; s.textContent = "head " + (h + 1); grid.appendChild(s); }
    for (var l = 0; l < L; l++) {
      var lab = document.createElement("span"); lab.className = "mv-lab"; lab.textContent = "layer " + (l + 1); grid.appendChild(lab);
      for (h = 0; h < H; h++) {
        var c = document.createElement("canvas");
        c.title = (l + 1) + "-" + (h + 1);
        paint(c, l, h, T, false); painted++;
        (function (l, h) {
          c.addEventListener("click", function () {
            zoom.innerHTML = "<div class='mv-lab'>head " + (l + 1) + "-" + (h + 1) + "</div>";
            var big = document.createElement("canvas"); zoom.appendChild(big);
            paint(big, l, h, Math.max(240, Math.min(560, 14 * n)), true);
          });
        })(l, h);
        grid.appendChild(c);
      }
    }
    root.querySelector(".mv-png").addEventListener("click", function () {
      var out = document.createElement("canvas"), gap = 4, lab = 16;
      out.width = H * (T + gap) + lab; out.height = L * (T + gap) + lab;
      var ctx = out.getContext("2d"); ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, out.width, out.height);
      var tiles = grid.querySelectorAll("canvas");
      for (var k = 0; k < tiles.length; k++) { ctx.drawImage(tiles[k], lab + (k % H) * (T + gap), lab + Math.floor(k / H) * (T + gap)); }
      var a = document.createElement("a"); a.href = out.toDataURL("image/png"); a.download = "model_view.png";
      document.body.appendChild(a); a.click(); document.body.removeChild(a);
    });
    root.setAttribute("data-mv-tiles", String(painted));
    root.setAttribute("data-mv-rendered", "1");
  }
  start();
})();
"""

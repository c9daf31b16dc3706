/* msimaging QC viewer: three planes of a visit with mask overlays. Vanilla JS, no network.
   Data: <script type="application/json" class="msv-data"> in each .msv-viewer, volumes x-fastest,
   zlib-deflated and base64-encoded (msimaging.viewer.encode). Radiological display: the subject's
   right on the viewer's left; anterior up (axial), superior up (coronal, sagittal), anterior left
   (sagittal). */
(function () {
  'use strict';
  var BITS = {lesions: 1, 'new': 2, enlarging: 4, enhancing: 8};
  var ORDER = ['lesions', 'enlarging', 'new', 'enhancing'];
  // plane: [column axis, row axis, slice axis, column flipped, marks left/right/top/bottom]
  var PLANES = {
    axial: [0, 1, 2, true, ['R', 'L', 'A', 'P']],
    coronal: [0, 2, 1, true, ['R', 'L', 'S', 'I']],
    sagittal: [1, 2, 0, true, ['A', 'P', 'S', 'I']]
  };
  var TARGET_PX = 250;
  var viewers = {};

  function bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }
  function inflate(b64) {
    var stream = new Blob([bytes(b64)]).stream().pipeThrough(new DecompressionStream('deflate'));
    return new Response(stream).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
  }
  function rgb(hex) {
    return [parseInt(hex.substr(1, 2), 16), parseInt(hex.substr(3, 2), 16), parseInt(hex.substr(5, 2), 16)];
  }

  function Viewer(root, d, images, labels) {
    var self = this;
    this.root = root; this.d = d; this.n = d.shape; this.z = d.zooms;
    this.images = images; this.labels = labels;
    this.base = Object.keys(images)[0];
    this.cur = [this.n[0] >> 1, this.n[1] >> 1, this.n[2] >> 1];
    this.show = {}; this.colour = {};
    d.masks.forEach(function (m) { self.show[m] = true; self.colour[m] = rgb(d.colours[m]); });
    var extent = Math.max(this.n[0] * this.z[0], this.n[1] * this.z[1], this.n[2] * this.z[2]);
    this.scale = TARGET_PX / extent;
    this.planes = {};
    Object.keys(PLANES).forEach(function (p) {
      var canvas = root.querySelector('canvas[data-plane="' + p + '"]');
      var slider = root.querySelector('input.msv-slider[data-plane="' + p + '"]');
      var index = root.querySelector('.msv-index[data-plane="' + p + '"]');
      var spec = PLANES[p], w = self.n[spec[0]], h = self.n[spec[1]];
      canvas.width = Math.max(1, Math.round(w * self.z[spec[0]] * self.scale));
      canvas.height = Math.max(1, Math.round(h * self.z[spec[1]] * self.scale));
      var off = document.createElement('canvas');
      off.width = w; off.height = h;
      slider.max = String(self.n[spec[2]] - 1);
      self.planes[p] = {canvas: canvas, slider: slider, index: index, off: off, w: w, h: h, spec: spec};
      canvas.addEventListener('click', function (e) { self.pick(p, e); });
      canvas.addEventListener('wheel', function (e) {
        e.preventDefault();
        self.step(p, e.deltaY > 0 ? -1 : 1);
      }, {passive: false});
      slider.addEventListener('input', function () { self.cur[spec[2]] = +slider.value; self.draw(); });
    });
    root.querySelectorAll('input[type=radio]').forEach(function (r) {
      r.addEventListener('change', function () { if (r.checked) { self.base = r.value; self.draw(); } });
    });
    root.querySelectorAll('input.msv-mask').forEach(function (c) {
      c.addEventListener('change', function () { self.show[c.value] = c.checked; self.draw(); });
    });
  }
  Viewer.prototype.step = function (p, delta) {
    var a = PLANES[p][2];
    this.cur[a] = Math.min(this.n[a] - 1, Math.max(0, this.cur[a] + delta));
    this.draw();
  };
  Viewer.prototype.pick = function (p, e) {
    var pl = this.planes[p], rect = pl.canvas.getBoundingClientRect();
    var c = Math.floor((e.clientX - rect.left) / rect.width * pl.w);
    var r = Math.floor((e.clientY - rect.top) / rect.height * pl.h);
    c = Math.min(pl.w - 1, Math.max(0, c)); r = Math.min(pl.h - 1, Math.max(0, r));
    this.cur[pl.spec[0]] = pl.spec[3] ? pl.w - 1 - c : c;
    this.cur[pl.spec[1]] = pl.h - 1 - r;
    this.draw();
  };
  Viewer.prototype.centre = function (ijk) {
    for (var a = 0; a < 3; a++) { this.cur[a] = Math.min(this.n[a] - 1, Math.max(0, ijk[a] | 0)); }
    this.draw();
  };
  Viewer.prototype.drawPlane = function (p) {
    var pl = this.planes[p], s = pl.spec, w = pl.w, h = pl.h, n = this.n;
    var img = this.images[this.base], lab = this.labels;
    var octx = pl.off.getContext('2d'), data = octx.createImageData(w, h), px = data.data;
    var v = [0, 0, 0], masks = [], self = this;
    ORDER.forEach(function (m) { if (self.show[m]) { masks.push([BITS[m], self.colour[m]]); } });
    v[s[2]] = this.cur[s[2]];
    for (var r = 0; r < h; r++) {
      v[s[1]] = h - 1 - r;
      for (var c = 0; c < w; c++) {
        v[s[0]] = s[3] ? w - 1 - c : c;
        var idx = v[0] + n[0] * (v[1] + n[1] * v[2]);
        var g = img[idx], R = g, G = g, B = g, l = lab[idx];
        if (l) {
          for (var m = 0; m < masks.length; m++) {
            if (l & masks[m][0]) {
              var col = masks[m][1];
              R = 0.45 * R + 0.55 * col[0]; G = 0.45 * G + 0.55 * col[1]; B = 0.45 * B + 0.55 * col[2];
            }
          }
        }
        var o = 4 * (r * w + c);
        px[o] = R; px[o + 1] = G; px[o + 2] = B; px[o + 3] = 255;
      }
    }
    octx.putImageData(data, 0, 0);
    var ctx = pl.canvas.getContext('2d'), W = pl.canvas.width, H = pl.canvas.height;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(pl.off, 0, 0, W, H);
    var cc = s[3] ? w - 1 - this.cur[s[0]] : this.cur[s[0]], rr = h - 1 - this.cur[s[1]];
    var x = (cc + 0.5) * W / w, y = (rr + 0.5) * H / h;
    ctx.strokeStyle = 'rgba(0,200,255,0.55)'; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.moveTo(0, y); ctx.lineTo(W, y); ctx.stroke();
    ctx.fillStyle = '#fff'; ctx.font = '11px sans-serif';
    var marks = s[4];
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'left'; ctx.fillText(marks[0], 3, H / 2);
    ctx.textAlign = 'right'; ctx.fillText(marks[1], W - 3, H / 2);
    ctx.textAlign = 'center'; ctx.textBaseline = 'top'; ctx.fillText(marks[2], W / 2, 2);
    ctx.textBaseline = 'bottom'; ctx.fillText(marks[3], W / 2, H - 2);
    var k = this.cur[s[2]];
    pl.slider.value = String(k);
    pl.index.dataset.index = String(k);
    pl.index.textContent = p + ' ' + (k + 1) + ' / ' + n[s[2]];
  };
  Viewer.prototype.draw = function () {
    var self = this;
    Object.keys(PLANES).forEach(function (p) { self.drawPlane(p); });
    var A = this.d.affine, c = this.cur, ras = [0, 1, 2].map(function (r) {
      return A[r][0] * c[0] + A[r][1] * c[1] + A[r][2] * c[2] + A[r][3];
    });
    var pos = this.root.querySelector('.msv-pos');
    pos.textContent = 'voxel ' + c.join(',') + '  RAS ' + ras.map(function (x) { return x.toFixed(0); }).join(', ') + ' mm';
    pos.dataset.voxel = c.join(' ');
  };

  function load(root) {
    var d = JSON.parse(root.querySelector('script.msv-data').textContent);
    var names = Object.keys(d.images);
    return Promise.all(names.map(function (k) { return inflate(d.images[k]); }).concat([inflate(d.labels)]))
      .then(function (vols) {
        var images = {};
        names.forEach(function (k, i) { images[k] = vols[i]; });
        var v = new Viewer(root, d, images, vols[names.length]);
        viewers[root.id] = v;
        v.draw();
        root.dataset.ready = 'true';
      });
  }

  function onRow(tr) {
    var v = viewers[tr.dataset.viewer];
    if (!v) { return; }
    document.querySelectorAll('tr.msv-lesion.selected').forEach(function (t) { t.classList.remove('selected'); });
    tr.classList.add('selected');
    v.centre(tr.dataset.voxel.split(' ').map(Number));
    v.root.scrollIntoView({block: 'nearest'});
  }

  document.addEventListener('click', function (e) {
    var tr = e.target.closest ? e.target.closest('tr.msv-lesion') : null;
    if (tr) { onRow(tr); }
  });
  document.addEventListener('keydown', function (e) {
    var tr = e.target.closest ? e.target.closest('tr.msv-lesion') : null;
    if (tr && e.key === 'Enter') { onRow(tr); }
  });
  function start() {
    var roots = Array.prototype.slice.call(document.querySelectorAll('.msv-viewer'));
    Promise.all(roots.map(load)).then(function () {
      document.body.dataset.viewersReady = String(roots.length);
    }, function (err) {
      document.body.dataset.viewersReady = 'error';
      console.error('msimaging viewer: ' + err);
    });
  }
  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', start); } else { start(); }
}());

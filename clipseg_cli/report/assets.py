"""The page's own stylesheet and script, inlined into index.html (no CDN, no framework)."""

from __future__ import annotations

CSS = r"""
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f1f5f9;--card:#fff;--accent:#4f46e5;--bad:#dc2626;
--hatch:repeating-linear-gradient(135deg,#fff 0 3px,#475569 3px 6px);--bar-h:52px}
*{box-sizing:border-box}
html{scroll-padding-top:calc(var(--bar-h) + 40px)}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
a{color:var(--accent)}
.muted{color:var(--muted)}
header.top{background:#0f172a;color:#e2e8f0;padding:18px 24px 16px}
header.top h1{margin:0 0 4px;font-size:20px;font-weight:650;color:#fff}
header.top h1 code{font-size:18px;background:#1e293b;padding:1px 6px;border-radius:4px}
header.top .sub{margin:0;color:#94a3b8;font-size:12.5px}
header.top .sub b{color:#cbd5e1;font-weight:600}
.summary{padding:16px 24px 8px;display:flex;flex-direction:column;gap:14px}
.stats{display:flex;flex-wrap:wrap;gap:10px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:8px 14px;min-width:118px}
.stat .v{font-size:22px;font-weight:650;letter-spacing:-.01em}
.stat .k{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.stat.bad .v{color:var(--bad)}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 12px}
figcaption{font-size:12px;font-weight:600;color:var(--muted);margin-bottom:6px;text-transform:uppercase;letter-spacing:.04em}
figure .scroll{max-height:260px;overflow-y:auto}
figure.gt{flex:0 1 auto}
figure.gt p{margin:4px 0 0;font-size:12px;max-width:560px}
figcaption b{color:var(--ink)}
svg.chart{display:block;font:11px system-ui,sans-serif}
svg.chart g.bar{cursor:pointer}
svg.chart g.bar:hover rect:first-child{fill:#eef2ff}
svg.chart g.bar.on rect:first-child{fill:#e0e7ff}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;font-size:12.5px;align-items:center}
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;border:1px solid rgba(0,0,0,.3);vertical-align:-2px;margin-right:5px}
.sw.ign{background:var(--hatch)}
.sw.bg{background:#fff}
details{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:8px 14px}
details summary{cursor:pointer;font-weight:600}
details ul{margin:6px 0 2px;padding-left:18px;max-height:220px;overflow:auto}
details.fail summary{color:var(--bad)}
.problems{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.problems details{flex:0 1 auto;max-width:100%}
.problems .note{margin:6px 0;flex-basis:100%}
table.miou{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
table.miou th,table.miou td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:right}
table.miou th:first-child,table.miou td:first-child{text-align:left}
table.miou tr.dim td{color:#94a3b8}
.toolbar{position:sticky;top:0;z-index:5;height:var(--bar-h);display:flex;gap:14px;align-items:center;padding:0 24px;
background:rgba(255,255,255,.96);backdrop-filter:blur(6px);border-bottom:1px solid var(--line);box-shadow:0 1px 3px rgba(15,23,42,.06)}
.toolbar label{font-size:12.5px;color:var(--muted);display:flex;gap:6px;align-items:center}
.toolbar select,.toolbar input{font:inherit;font-size:13px;padding:5px 8px;border:1px solid #cbd5e1;border-radius:7px;background:#fff;color:var(--ink)}
.toolbar input[type=search]{width:190px}
.toolbar button{font:inherit;font-size:13px;padding:5px 10px;border:1px solid #cbd5e1;border-radius:7px;background:#fff;cursor:pointer}
.toolbar button:hover{border-color:var(--accent)}
#count{font-weight:600}
.toolbar .keys{margin-left:auto;font-size:12px;color:var(--muted)}
kbd{font:11px ui-monospace,monospace;border:1px solid #cbd5e1;border-bottom-width:2px;border-radius:4px;padding:0 4px;background:#fff;color:var(--ink)}
main{padding:0 24px 40px}
table.gallery{width:100%;border-collapse:separate;border-spacing:0;background:var(--card);border:1px solid var(--line);border-radius:10px;margin-top:12px}
table.gallery th{position:sticky;top:var(--bar-h);z-index:4;background:#f8fafc;text-align:left;font-size:11.5px;text-transform:uppercase;
letter-spacing:.03em;color:var(--muted);padding:8px 8px;border-bottom:1px solid var(--line);white-space:nowrap;user-select:none}
table.gallery th[data-sort]{cursor:pointer}
table.gallery th[data-sort]:hover{color:var(--ink)}
table.gallery th.sorted{color:var(--accent)}
table.gallery th.sorted::after{content:" \25B2"}
table.gallery th.sorted.desc::after{content:" \25BC"}
table.gallery td{padding:8px 8px;border-bottom:1px solid var(--line);vertical-align:top}
table.gallery tr:hover td{background:#f8fafc}
td.rank{color:#94a3b8;font-size:12px;text-align:right;width:1%}
td.pic{width:1%;white-space:nowrap}
td.pic img{height:104px;width:auto;border-radius:6px;display:block;cursor:zoom-in;background:#e2e8f0;box-shadow:0 0 0 1px rgba(15,23,42,.08)}
td.pic img.gt{height:104px}
td.name{min-width:180px;max-width:240px}
td.name a{font-weight:600;text-decoration:none;overflow-wrap:anywhere}
td.name a:hover{text-decoration:underline}
td.name .dims{font-size:12px;color:var(--muted)}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.num .mini{height:4px;background:#e2e8f0;border-radius:2px;margin-top:5px;width:64px;margin-left:auto;overflow:hidden}
td.num .mini i{display:block;height:100%;background:#94a3b8}
td.num .mini.ign i{background:var(--hatch)}
td.num.low{color:var(--bad);font-weight:600}
.chips{display:flex;flex-wrap:wrap;gap:4px;margin-bottom:6px}
.chip{display:inline-flex;align-items:center;gap:5px;border:1px solid var(--line);border-radius:999px;padding:1px 8px 1px 4px;font-size:12.5px;background:#fff;cursor:pointer;white-space:nowrap}
.chip:hover{border-color:var(--accent)}
.chip i{width:11px;height:11px;border-radius:50%;border:1px solid rgba(0,0,0,.3)}
.chip b{font-weight:500;color:var(--muted)}
td.lab .fg{font-size:12px;color:var(--muted);margin-top:3px}
.areabar{display:flex;height:8px;width:170px;border-radius:4px;overflow:hidden;background:#fff;box-shadow:0 0 0 1px rgba(15,23,42,.12)}
.areabar span{display:block;height:100%}
.areabar span.ign{background:var(--hatch)}
.na{color:#94a3b8}
#more{height:40px}
.empty{padding:30px;text-align:center;color:var(--muted)}
.viewer{position:fixed;inset:0;z-index:20;background:rgb(2,6,23);color:#e2e8f0;display:flex;flex-direction:column}
.viewer[hidden]{display:none}
.vbar{display:flex;gap:14px;align-items:center;padding:10px 18px;border-bottom:1px solid #1e293b;font-size:13px}
.vbar button{font:inherit;background:#1e293b;color:#e2e8f0;border:1px solid #334155;border-radius:7px;padding:4px 11px;cursor:pointer}
.vbar button:hover{border-color:#818cf8}
.vbar strong{font-size:14px;word-break:break-all}
.vbar label{display:flex;gap:5px;align-items:center;color:#cbd5e1}
.vbar .sp{flex:1}
.vbar a{color:#a5b4fc}
.vbody{flex:1;display:flex;min-height:0}
.stage{flex:1;display:flex;align-items:center;justify-content:center;min-width:0;padding:14px}
.stack{position:relative;line-height:0;background:#334155;box-shadow:0 8px 30px rgba(0,0,0,.5)}
.stack img{display:block}
.stack img.photo{position:absolute;inset:0;width:100%;height:100%}
.stack img.ov{position:relative}
.stack img.ov.px,.stack img.ov.keyed{image-rendering:pixelated}
.stack img.ov.keyed{filter:url(#mask-overlay)}
.vinfo{width:300px;flex:none;overflow:auto;padding:16px 18px;border-left:1px solid #1e293b;font-size:13px}
.vinfo h3{margin:14px 0 6px;font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;color:#94a3b8}
.vinfo h3:first-child{margin-top:0}
.vinfo table{border-collapse:collapse;width:100%}
.vinfo td{padding:3px 0;border-bottom:1px solid #1e293b}
.vinfo td:last-child{text-align:right;font-variant-numeric:tabular-nums}
.vinfo .sw{border-color:rgba(255,255,255,.4)}
"""

JS = r"""
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('report-data').textContent);
  var ALL = D.images, CLASSES = D.classes, COLOURS = D.colours, CHUNK = 150;
  // Worst first for each key (true: descending), as clipseg_cli.report.records.SORT_KEYS.
  var WORST_DESC = {confidence: false, ignored: true, area: false, name: false, iou: false, seconds: true};
  var state = {key: D.sort.key, desc: D.sort.desc, label: -1, q: ''};
  var view = [], shown = 0, current = -1;
  var $ = function (id) { return document.getElementById(id); };
  var rows = $('rows'), countEl = $('count');

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }
  function enc(path) { return path.split('/').map(encodeURIComponent).join('/'); }
  function pct(v, digits) { return v === null || v === undefined ? '<span class="na">n/a</span>' : (100 * v).toFixed(digits === undefined ? 1 : digits) + '%'; }
  function thumbUrl(r) { return 'thumbs/' + enc(r.stem) + '.jpg'; }
  function gtThumbUrl(r) { return 'thumbs-gt/' + enc(r.stem) + '.jpg'; }
  function overlayUrl(r, gt) {
    if (gt) return 'overlays-gt/' + enc(r.stem) + '.png';
    if (r.overlay === 'mask') return D.mask_base + enc(r.stem) + '.png';  // coloured by #mask-overlay
    return 'overlays/' + enc(r.stem) + '.png';
  }
  function photoUrl(r) {
    if (r.photo === 'orig') return D.photo_base + enc(r.image);
    if (r.photo === 'copy') return 'photos/' + enc(r.stem) + '.jpg';
    return null;
  }
  function thumbSize(r) {
    var s = D.thumb / Math.max(r.size[0], r.size[1]);
    return [Math.max(1, Math.round(r.size[0] * s)), Math.max(1, Math.round(r.size[1] * s))];
  }
  function value(r, key) {
    switch (key) {
      case 'confidence': return r.confidence;
      case 'ignored': return r.ignored;
      case 'area': return r.foreground;
      case 'iou': return r.iou;
      case 'seconds': return r.seconds ? (r.seconds.total === undefined ? null : r.seconds.total) : null;
      default: return r.image;
    }
  }
  function byName(a, b) { return a.image < b.image ? -1 : a.image > b.image ? 1 : 0; }
  function compare(a, b) {
    var va = value(a, state.key), vb = value(b, state.key);
    var na = va === null || va === undefined, nb = vb === null || vb === undefined;
    if (na || nb) return na && nb ? byName(a, b) : (na ? 1 : -1);  // missing values last
    if (va < vb) return state.desc ? 1 : -1;
    if (va > vb) return state.desc ? -1 : 1;
    return byName(a, b);
  }

  function rowHtml(r, k) {
    var ts = thumbSize(r), chips = '', bar = '', lo = D.low_confidence;
    r.labels.forEach(function (l) {
      var area = 0;
      r.areas.forEach(function (p) { if (p[0] === l) area = p[1]; });
      chips += '<span class="chip" data-label="' + l + '" title="show only ' + esc(CLASSES[l]) + '"><i style="background:' +
        COLOURS[l] + '"></i>' + esc(CLASSES[l]) + ' <b>' + (100 * area).toFixed(1) + '%</b></span>';
    });
    r.areas.forEach(function (p) {
      if (p[0] === 0) return;
      bar += '<span style="width:' + (100 * p[1]).toFixed(2) + '%;background:' + COLOURS[p[0]] + '" title="' +
        esc(CLASSES[p[0]]) + ' ' + (100 * p[1]).toFixed(1) + '%"></span>';
    });
    if (r.ignored > 0) bar += '<span class="ign" style="width:' + (100 * r.ignored).toFixed(2) + '%" title="ignored ' + (100 * r.ignored).toFixed(1) + '%"></span>';
    var sec = r.seconds, secText = sec && sec.total !== undefined ? sec.total.toFixed(2) + ' s' : '<span class="na">n/a</span>';
    var secTitle = sec ? Object.keys(sec).map(function (k) { return k + ' ' + sec[k].toFixed(3) + ' s'; }).join(', ') : 'not timed (done by an earlier run)';
    var conf = r.confidence === null ? '<span class="na">n/a</span>' : r.confidence.toFixed(3);
    var html = '<tr data-k="' + k + '"><td class="rank">' + (k + 1) + '</td>' +
      '<td class="pic"><img class="open" loading="lazy" decoding="async" alt="" width="' + (2 * ts[0] + 4) + '" height="' + ts[1] +
      '" src="' + thumbUrl(r) + '"></td>' +
      '<td class="name"><a href="#" class="open">' + esc(r.image) + '</a><div class="dims">' + r.size[0] + ' × ' + r.size[1] + '</div></td>' +
      '<td class="lab"><div class="chips">' + chips + '</div><div class="areabar" title="foreground ' +
      (100 * r.foreground).toFixed(1) + '%">' + bar + '</div><div class="fg">foreground ' + pct(r.foreground) + '</div></td>' +
      '<td class="num c-ignored">' + pct(r.ignored) + '<div class="mini ign"><i style="width:' + (100 * r.ignored).toFixed(1) + '%"></i></div></td>' +
      '<td class="num c-confidence' + (r.confidence !== null && r.confidence < lo ? ' low' : '') + '">' + conf + '</td>' +
      '<td class="num c-seconds" title="' + esc(secTitle) + '">' + secText + '</td>';
    if (D.has_gt) {
      html += '<td class="num c-iou">' + pct(r.iou) + '</td><td class="pic">' +
        (r.has_gt ? '<img class="open gt" loading="lazy" decoding="async" alt="" width="' + ts[0] + '" height="' + ts[1] + '" src="' + gtThumbUrl(r) + '">' : '<span class="na">no GT</span>') + '</td>';
    }
    return html + '</tr>';
  }

  function renderMore() {
    if (shown >= view.length) return;
    var end = Math.min(view.length, shown + CHUNK), html = '';
    for (var k = shown; k < end; k++) html += rowHtml(view[k], k);
    rows.insertAdjacentHTML('beforeend', html);
    shown = end;
  }

  function refresh() {
    var q = state.q.toLowerCase();
    view = ALL.filter(function (r) {
      return (state.label < 0 || r.labels.indexOf(state.label) >= 0) && (!q || r.image.toLowerCase().indexOf(q) >= 0);
    });
    view.sort(compare);
    rows.innerHTML = '';
    shown = 0;
    renderMore();
    $('empty').hidden = view.length > 0;
    countEl.textContent = view.length === ALL.length ? ALL.length + ' images' : view.length + ' of ' + ALL.length + ' images';
    countEl.setAttribute('data-count', view.length);
    document.querySelectorAll('th[data-sort]').forEach(function (th) {
      var on = th.getAttribute('data-sort') === state.key;
      th.classList.toggle('sorted', on);
      th.classList.toggle('desc', on && state.desc);
    });
    $('sort-key').value = state.key;
    $('sort-dir').textContent = state.desc === WORST_DESC[state.key] ? 'worst first' : 'best first';
    $('class-filter').value = String(state.label);
    document.querySelectorAll('svg.chart g.bar').forEach(function (g) {
      g.classList.toggle('on', +g.getAttribute('data-label') === state.label);
    });
  }

  function setSort(key, desc) { state.key = key; state.desc = desc === undefined ? WORST_DESC[key] : desc; refresh(); }
  function setLabel(label) { state.label = label; refresh(); }

  // ---- full-size viewer -------------------------------------------------------------
  var viewer = $('viewer'), vPhoto = $('v-photo'), vOv = $('v-ov'), vInfo = $('v-info');
  var showOverlay = true, showGt = false;

  function fit(r) {
    var stage = viewer.querySelector('.stage');
    var aw = stage.clientWidth - 28, ah = stage.clientHeight - 28;
    var s = Math.min(aw / r.size[0], ah / r.size[1]);
    if (!(s > 0)) s = 1;
    vOv.style.width = Math.max(1, Math.floor(r.size[0] * s)) + 'px';
    vOv.style.height = Math.max(1, Math.floor(r.size[1] * s)) + 'px';
    vOv.classList.toggle('px', s > 1.5);
  }

  function infoHtml(r) {
    var h = '<h3>labels and area</h3><table>';
    r.areas.forEach(function (p) {
      var sw = p[0] === 0 ? '<span class="sw bg"></span>' : '<span class="sw" style="background:' + COLOURS[p[0]] + '"></span>';
      h += '<tr><td>' + sw + esc(CLASSES[p[0]]) + (p[0] !== 0 && r.labels.indexOf(p[0]) < 0 ? ' <span class="na">(not a label)</span>' : '') +
        '</td><td>' + pct(p[1]) + '</td></tr>';
    });
    r.labels.forEach(function (l) {
      if (!r.areas.some(function (p) { return p[0] === l; }))
        h += '<tr><td><span class="sw" style="background:' + COLOURS[l] + '"></span>' + esc(CLASSES[l]) + '</td><td>0.0%</td></tr>';
    });
    h += '<tr><td><span class="sw ign"></span>ignored (255)</td><td>' + pct(r.ignored) + '</td></tr></table>';
    h += '<h3>scores</h3><table><tr><td>mean confidence</td><td>' + (r.confidence === null ? '<span class="na">n/a</span>' : r.confidence.toFixed(3)) + '</td></tr>';
    if (D.has_gt) h += '<tr><td>IoU vs GT</td><td>' + (r.has_gt ? pct(r.iou) : '<span class="na">no GT</span>') + '</td></tr>';
    h += '</table><h3>seconds</h3><table>';
    if (r.seconds) Object.keys(r.seconds).forEach(function (k) { h += '<tr><td>' + esc(k) + '</td><td>' + r.seconds[k].toFixed(3) + '</td></tr>'; });
    else h += '<tr><td colspan="2" class="na">not timed (done by an earlier run)</td></tr>';
    h += '</table><h3>image</h3><table><tr><td>size</td><td>' + r.size[0] + ' × ' + r.size[1] + '</td></tr></table>';
    return h;
  }

  function show(k) {
    if (k < 0 || k >= view.length) return;
    current = k;
    var r = view[k], photo = photoUrl(r), gt = showGt && r.has_gt;
    vOv.src = overlayUrl(r, gt);
    vOv.classList.toggle('keyed', !gt && r.overlay === 'mask');
    if (photo) { vPhoto.src = photo; vPhoto.hidden = false; } else { vPhoto.removeAttribute('src'); vPhoto.hidden = true; }
    vOv.style.opacity = showOverlay ? $('v-alpha').value / 100 : 0;
    fit(r);
    $('v-name').textContent = r.image;
    $('v-pos').textContent = (k + 1) + ' / ' + view.length;
    $('v-pos').setAttribute('data-index', k);
    $('v-mask').href = D.mask_base + enc(r.stem) + '.png';
    $('v-which').textContent = gt ? 'ground truth' : 'pseudo mask';
    vInfo.innerHTML = infoHtml(r);
    $('v-prev').disabled = k === 0;
    $('v-next').disabled = k === view.length - 1;
    if (k + 1 < view.length) { var pre = new Image(); pre.src = overlayUrl(view[k + 1], gt); var p2 = photoUrl(view[k + 1]); if (p2) { var pp = new Image(); pp.src = p2; } }
  }
  function open(k) { viewer.hidden = false; document.body.style.overflow = 'hidden'; show(k); }
  function close() {
    viewer.hidden = true; document.body.style.overflow = '';
    var row = rows.querySelector('tr[data-k="' + current + '"]');
    if (row) row.scrollIntoView({block: 'nearest'});
  }
  function step(d) {
    var k = current + d;
    if (k < 0 || k >= view.length) return;
    while (k >= shown) renderMore();  // keep the table in step with the viewer
    show(k);
  }

  // ---- events -----------------------------------------------------------------------
  rows.addEventListener('click', function (e) {
    var chip = e.target.closest('.chip');
    if (chip) { setLabel(+chip.getAttribute('data-label')); return; }
    var opener = e.target.closest('.open');
    if (opener) {
      e.preventDefault();
      var tr = opener.closest('tr');
      if (opener.classList.contains('gt')) showGt = true; else if (opener.tagName === 'IMG') showGt = false;
      $('v-gt') && ($('v-gt').checked = showGt);
      open(+tr.getAttribute('data-k'));
    }
  });
  document.querySelectorAll('th[data-sort]').forEach(function (th) {
    th.addEventListener('click', function () {
      var key = th.getAttribute('data-sort');
      if (key === state.key) setSort(key, !state.desc); else setSort(key);
    });
  });
  document.querySelectorAll('svg.chart g.bar').forEach(function (g) {
    g.addEventListener('click', function () {
      var l = +g.getAttribute('data-label');
      setLabel(state.label === l ? -1 : l);
    });
  });
  $('class-filter').addEventListener('change', function (e) { setLabel(+e.target.value); });
  $('sort-key').addEventListener('change', function (e) { setSort(e.target.value); });
  $('sort-dir').addEventListener('click', function () { setSort(state.key, !state.desc); });
  var timer = null;
  $('search').addEventListener('input', function (e) {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = e.target.value; refresh(); }, 120);
  });
  $('v-prev').addEventListener('click', function () { step(-1); });
  $('v-next').addEventListener('click', function () { step(1); });
  $('v-close').addEventListener('click', close);
  $('v-overlay').addEventListener('change', function (e) { showOverlay = e.target.checked; show(current); });
  $('v-alpha').addEventListener('input', function () { if (showOverlay) vOv.style.opacity = $('v-alpha').value / 100; });
  if ($('v-gt')) $('v-gt').addEventListener('change', function (e) { showGt = e.target.checked; show(current); });
  viewer.querySelector('.stage').addEventListener('click', function (e) { if (e.target.classList.contains('stage')) close(); });
  window.addEventListener('resize', function () { if (!viewer.hidden) fit(view[current]); });
  document.addEventListener('keydown', function (e) {
    if (viewer.hidden || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === 'ArrowRight') { step(1); e.preventDefault(); }
    else if (e.key === 'ArrowLeft') { step(-1); e.preventDefault(); }
    else if (e.key === 'Escape') { close(); }
    else if (e.key === 'o' || e.key === 'O') { $('v-overlay').click(); }
    else if ((e.key === 'g' || e.key === 'G') && $('v-gt')) { $('v-gt').click(); }
  });
  if ('IntersectionObserver' in window) {
    new IntersectionObserver(function (entries) {
      if (entries.some(function (x) { return x.isIntersecting; })) renderMore();
    }, {rootMargin: '800px'}).observe($('more'));
  } else {
    $('more').innerHTML = '<button type="button">show more</button>';
    $('more').addEventListener('click', renderMore);
  }
  refresh();
  document.body.setAttribute('data-ready', '1');
})();
"""

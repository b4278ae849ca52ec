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
kbd{font:600 11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;border:1px solid #cbd5e1;border-bottom-width:2px;border-radius:4px;padding:0 4px;background:#fff;color:var(--ink)}
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
.vbar{flex-wrap:wrap;row-gap:6px}
.vbar>*{flex:none;white-space:nowrap}
.vbar strong{flex:0 1 auto;min-width:0;white-space:normal;word-break:normal;overflow-wrap:anywhere}
.vbar .sp{flex:1 1 0}
.vbar>span:not(.sp){display:inline-flex;gap:4px;align-items:center}
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
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
svg.chart g.bin{cursor:pointer}
svg.chart g.bin:hover rect:first-child{fill:#eef2ff}
svg.chart g.bin.on rect:first-child{fill:#c7d2fe}
#review-box .counts{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:8px}
#review-box .mc{font:inherit;font-size:13px;border:1px solid var(--line);border-radius:8px;background:#fff;padding:4px 10px;cursor:pointer}
#review-box .mc b{font-size:16px;margin-left:4px}
#review-box .mc.on{border-color:var(--accent);box-shadow:0 0 0 2px #c7d2fe}
#review-box .mc.accepted b{color:#15803d}#review-box .mc.rejected b{color:var(--bad)}#review-box .mc.fix b{color:#b45309}
#review-box .io{display:flex;flex-wrap:wrap;gap:6px;align-items:center;font-size:12.5px}
#review-box .io button,#review-box .io label.btn{font:inherit;font-size:12.5px;border:1px solid #cbd5e1;border-radius:7px;background:#fff;padding:3px 9px;cursor:pointer;color:var(--ink)}
#review-status{color:var(--muted)}
#review-status.bad{color:var(--bad)}
#review-box p{margin:6px 0 0;font-size:12px;max-width:340px}
.mk{display:inline-flex;gap:3px;margin-top:5px}
.mb{font:600 11.5px system-ui,sans-serif;min-width:26px;padding:2px 6px;border:1px solid #cbd5e1;border-radius:6px;background:#fff;color:var(--muted);cursor:pointer}
.mb:hover{border-color:var(--accent)}
.mb.accepted.on{background:#16a34a;border-color:#16a34a;color:#fff}
.mb.rejected.on{background:var(--bad);border-color:var(--bad);color:#fff}
.mb.fix.on{background:#d97706;border-color:#d97706;color:#fff}
td.name .note{font-size:12px;color:#475569;margin-top:4px;font-style:italic;overflow-wrap:anywhere}
td.name .redo{color:#7c3aed}
tr.m-accepted td:first-child{box-shadow:inset 4px 0 #16a34a}
tr.m-rejected td:first-child{box-shadow:inset 4px 0 var(--bad)}
tr.m-fix td:first-child{box-shadow:inset 4px 0 #d97706}
tr.m-rejected td.pic img{opacity:.55}
table.gallery tr.cur td{background:#eef2ff}
#active{display:flex;gap:6px}
.toolbar button,#count{white-space:nowrap}
.vinfo .vkeys{margin-top:18px;font-size:12px;color:#94a3b8;line-height:1.9}
#active .clear{font-size:12px;padding:3px 8px;background:#eef2ff;border-color:#c7d2fe}
.toolbar select#mark-filter{max-width:130px}
.stage{overflow:hidden;position:relative}
.stage.zoomed .stack{cursor:grab}
.stack{transform-origin:0 0}
.stack img.ov.heat{image-rendering:auto}
.vbar select{font:inherit;background:#1e293b;color:#e2e8f0;border:1px solid #334155;border-radius:7px;padding:3px 6px}
.vbar #v-zoom{min-width:58px}
.vmarks{display:flex;gap:8px;align-items:center;padding:8px 18px;border-bottom:1px solid #1e293b;font-size:13px;flex-wrap:wrap}
.vmarks .mb{font-size:12.5px;padding:4px 10px;background:#1e293b;border-color:#334155;color:#e2e8f0}
.vmarks input{flex:1;min-width:160px;font:inherit;background:#0f172a;color:#e2e8f0;border:1px solid #334155;border-radius:7px;padding:4px 8px}
.vmarks input:disabled{opacity:.5}
.vmarks kbd,.vbar kbd{background:#1e293b;color:#e2e8f0;border-color:#475569}
.vinfo .ekey{font-size:12px;line-height:1.8}
.vinfo .ekey i{display:inline-block;width:12px;height:12px;border-radius:3px;vertical-align:-2px;margin:0 4px 0 8px}
.vinfo .ekey i:first-child{margin-left:0}
.vinfo .ekey i.e1{background:rgb(230,30,30)}.vinfo .ekey i.e2{background:rgb(250,200,0)}.vinfo .ekey i.e3{background:rgb(148,163,184)}
.vinfo .ekey i.jet{width:90px;background:linear-gradient(90deg,#00007f,#0000ff,#00ffff,#ffff00,#ff0000,#7f0000)}
@media (max-width:900px){
  header.top,.summary{padding-left:12px;padding-right:12px}
  main{padding:0 8px 30px}
  .toolbar{height:auto;min-height:var(--bar-h);flex-wrap:wrap;gap:6px 10px;padding:6px 12px;position:static}
  .toolbar .keys{margin-left:0;flex-basis:100%}
  .toolbar input[type=search]{width:140px}
  .charts figure{max-width:100%}
  .charts svg.chart{max-width:100%;height:auto}
  figure .scroll{overflow-x:auto}
  table.gallery,table.gallery tbody,table.gallery tr,table.gallery td{display:block}
  table.gallery thead{display:none}
  table.gallery tr{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:2px 10px;padding:10px;border-bottom:1px solid var(--line)}
  table.gallery td{border:0;padding:2px 0;width:auto;min-width:0}
  table.gallery tr.cur{background:#eef2ff}
  table.gallery tr.m-accepted{box-shadow:inset 4px 0 #16a34a}
  table.gallery tr.m-rejected{box-shadow:inset 4px 0 var(--bad)}
  table.gallery tr.m-fix{box-shadow:inset 4px 0 #d97706}
  table.gallery td.rank{display:none}
  table.gallery td.pic{grid-column:1 / -1;white-space:normal}
  table.gallery td.pic img{max-width:100%;height:auto;max-height:200px;object-fit:contain;object-position:left}
  table.gallery td.gtpic img{max-width:50%}
  table.gallery td.name{grid-column:1 / -1;max-width:none;min-width:0}
  table.gallery td.lab{grid-column:1 / -1}
  table.gallery td.num{text-align:left}
  table.gallery td.num::before{content:attr(data-h) " ";color:var(--muted);font-size:11.5px;text-transform:uppercase}
  table.gallery td.num .mini{margin-left:0}
  .areabar{width:100%}
  .vbar{flex-wrap:wrap;gap:6px 10px;padding:8px 10px}
  .vbody{flex-direction:column}
  .vinfo{width:auto;max-height:32vh;border-left:0;border-top:1px solid #1e293b}
}
"""

JS = r"""
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('report-data').textContent);
  var ALL = D.images, CLASSES = D.classes, COLOURS = D.colours, CHUNK = 150, BINS = D.bins;
  var MARKS = ['accepted', 'rejected', 'fix'], MARK_KEYS = {a: 'accepted', r: 'rejected', f: 'fix'};
  // Worst first for each key (true: descending), as clipseg_cli.report.records.SORT_KEYS.
  var WORST_DESC = {confidence: false, ignored: true, area: false, name: false, iou: false, seconds: true};
  var state = {key: D.sort.key, desc: D.sort.desc, label: -1, q: '', mark: '', ign: -1, conf: -1};
  var view = [], shown = 0, current = -1, cursor = -1;
  var $ = function (id) { return document.getElementById(id); };
  var rows = $('rows'), countEl = $('count');
  // Served by `wsss-label report OUT --serve`: the page is /<token>/report/index.html.
  var served = /^https?:$/.test(location.protocol) && /\/report\/(index\.html)?$/.test(location.pathname);
  var base = served ? location.pathname.replace(/report\/(index\.html)?$/, '') : null;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }
  function enc(path) { return path.split('/').map(encodeURIComponent).join('/'); }
  function pct(v, digits) { return v === null || v === undefined ? '<span class="na">n/a</span>' : (100 * v).toFixed(digits === undefined ? 1 : digits) + '%'; }
  function bin(v) { return Math.min(BINS - 1, Math.max(0, Math.floor(v * BINS))); }
  function thumbUrl(r) { return 'thumbs/' + enc(r.stem) + '.jpg'; }
  function gtThumbUrl(r) { return 'thumbs-gt/' + enc(r.stem) + '.jpg'; }
  function photoUrl(r) {
    if (r.photo === 'orig') return (served ? base + '@images/' : D.photo_base) + enc(r.image);
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

  // ---- marks: accepted / rejected / fix, with a note -----------------------------------
  // The marks are one state {saved_at, marks: {image: {mark, note, at}}}, kept in
  // localStorage (survives a reload), and in OUT/review.json: posted to the server with
  // --serve, exported/imported by button without it. At start the newest of the
  // review.json the page was built with, localStorage's copy and the server's file wins.
  var STORE = 'wsss-label-review:' + D.run_id;
  var review = {saved_at: D.review ? D.review.updated_at || '' : '', marks: D.review ? D.review.marks : {}};
  var saveTimer = null, statusEl = $('review-status');

  function nowIso() { return new Date().toISOString().replace(/\.\d+Z$/, 'Z'); }
  function time(a) { var t = a ? Date.parse(a) : 0; return isNaN(t) ? 0 : t; }
  function newer(a, b) { return time(a) > time(b); }
  function status(text, bad) { statusEl.textContent = text; statusEl.classList.toggle('bad', !!bad); }
  function reviewJson() {
    var marks = {};
    Object.keys(review.marks).sort().forEach(function (k) {
      var m = review.marks[k], o = {mark: m.mark};
      if (m.note) o.note = m.note;
      if (m.at) o.at = m.at;
      marks[k] = o;
    });
    return {tool: 'wsss-label', kind: 'review', version: 1, updated_at: review.saved_at || nowIso(), marks: marks};
  }
  function validMarks(obj) {
    if (!obj || obj.kind !== 'review' || typeof obj.marks !== 'object' || obj.marks === null) return null;
    var out = {};
    for (var k in obj.marks) {
      var m = obj.marks[k];
      if (!m || MARKS.indexOf(m.mark) < 0) return null;
      out[k] = {mark: m.mark, note: typeof m.note === 'string' ? m.note : '', at: typeof m.at === 'string' ? m.at : ''};
    }
    return out;
  }
  function loadLocal() {
    try {
      var saved = JSON.parse(localStorage.getItem(STORE) || 'null');
      if (saved && saved.marks && newer(saved.saved_at, review.saved_at)) review = saved;
    } catch (e) { /* no storage (private mode): marks live in this page only */ }
  }
  function keepLocal() {
    try { localStorage.setItem(STORE, JSON.stringify(review)); } catch (e) { /* full or disabled */ }
  }
  function post() {
    status('saving…');
    var body = JSON.stringify(reviewJson());
    fetch(base + 'review.json', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: body})
      .then(function (res) { return res.json().then(function (j) { return [res.ok, j]; }); })
      .then(function (x) {
        if (x[0]) { status('saved to review.json · ' + x[1].saved + ' mark(s)'); document.body.setAttribute('data-saved', review.saved_at); }
        else status('not saved: ' + x[1].error, true);
      })
      .catch(function (e) { status('not saved (is the server still running?) · kept in this browser', true); });
  }
  function changed() {
    review.saved_at = nowIso();
    keepLocal();
    if (served) { clearTimeout(saveTimer); saveTimer = setTimeout(post, 250); }
    else status('kept in this browser · export to write review.json');
    markCounts();
  }
  function markOf(r) { var m = review.marks[r.image]; return m ? m.mark : ''; }
  function setMark(r, mark) {
    var old = review.marks[r.image];
    if (!mark || (old && old.mark === mark)) delete review.marks[r.image];  // the same key again clears it
    else review.marks[r.image] = {mark: mark, note: old ? old.note : '', at: nowIso()};
    changed();
    paintMark(r);
  }
  function setNote(r, note) {
    var m = review.marks[r.image];
    if (!m) return;
    m.note = note.slice(0, 2000);
    m.at = nowIso();
    changed();
    paintMark(r);
  }
  function paintMark(r) {
    var k = view.indexOf(r), tr = rows.querySelector('tr[data-k="' + k + '"]');
    if (tr) tr.outerHTML = rowHtml(r, k);
    if (!viewer.hidden && view[current] === r) markBar(r);
    if (k === cursor) setCursor(cursor, false);
  }
  function markCounts() {
    var n = {accepted: 0, rejected: 0, fix: 0}, marked = 0;
    Object.keys(review.marks).forEach(function (k) { n[review.marks[k].mark]++; });
    ALL.forEach(function (r) { if (review.marks[r.image]) marked++; });
    MARKS.forEach(function (m) { $('n-' + m).textContent = n[m]; });
    $('n-none').textContent = ALL.length - marked;
    document.querySelectorAll('#review-box .mc').forEach(function (b) { b.classList.toggle('on', b.getAttribute('data-mark') === state.mark); });
  }
  function exportReview() {
    var blob = new Blob([JSON.stringify(reviewJson(), null, 2) + '\n'], {type: 'application/json'});
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'review.json';
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    status('exported review.json · put it in the run folder (OUT/review.json)');
  }
  function importReview(file) {
    var reader = new FileReader();
    reader.onload = function () {
      var marks = null;
      try { marks = validMarks(JSON.parse(reader.result)); } catch (e) { marks = null; }
      if (!marks) { status('not imported: ' + file.name + ' is not a review.json of wsss-label', true); return; }
      review.marks = marks;
      changed();
      refresh();
      status('imported ' + Object.keys(marks).length + ' mark(s) from ' + file.name + (served ? '' : ' · kept in this browser'));
    };
    reader.readAsText(file);
  }

  // ---- the list --------------------------------------------------------------------------
  function markButtons(r) {
    var m = markOf(r), h = '<span class="mk">';
    MARKS.forEach(function (x) {
      h += '<button type="button" class="mb ' + x + (m === x ? ' on' : '') + '" data-mark="' + x + '" title="' + x +
        ' (' + x[0].toUpperCase() + ')">' + (x === 'accepted' ? '✓' : x === 'rejected' ? '✗' : 'fix') + '</button>';
    });
    return h + '</span>';
  }
  function rowHtml(r, k) {
    var ts = thumbSize(r), chips = '', bar = '', lo = D.low_confidence, m = markOf(r), note = m ? review.marks[r.image].note : '';
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
    var html = '<tr data-k="' + k + '"' + (m ? ' class="m-' + m + '" data-mark="' + m + '"' : '') + '><td class="rank">' + (k + 1) + '</td>' +
      '<td class="pic"><img class="open" loading="lazy" decoding="async" alt="" width="' + (2 * ts[0] + 4) + '" height="' + ts[1] +
      '" src="' + thumbUrl(r) + '"></td>' +
      '<td class="name"><a href="#" class="open">' + esc(r.image) + '</a><div class="dims">' + r.size[0] + ' × ' + r.size[1] +
      (r.redo ? ' · <span class="redo" title="relabelled by redo #' + r.redo + '">redo ' + r.redo + '</span>' : '') + '</div>' +
      markButtons(r) + (note ? '<div class="note" title="note">' + esc(note) + '</div>' : '') + '</td>' +
      '<td class="lab"><div class="chips">' + chips + '</div><div class="areabar" title="foreground ' +
      (100 * r.foreground).toFixed(1) + '%">' + bar + '</div><div class="fg">foreground ' + pct(r.foreground) + '</div></td>' +
      '<td class="num c-ignored" data-h="ignored">' + pct(r.ignored) + '<div class="mini ign"><i style="width:' + (100 * r.ignored).toFixed(1) + '%"></i></div></td>' +
      '<td class="num c-confidence' + (r.confidence !== null && r.confidence < lo ? ' low' : '') + '" data-h="confidence">' + conf + '</td>' +
      '<td class="num c-seconds" data-h="seconds" title="' + esc(secTitle) + '">' + secText + '</td>';
    if (D.has_gt) {
      html += '<td class="num c-iou" data-h="IoU">' + pct(r.iou) + '</td><td class="pic gtpic">' +
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

  function keep(r) {
    var q = state.q.toLowerCase(), m = markOf(r);
    if (state.label >= 0 && r.labels.indexOf(state.label) < 0) return false;
    if (q && r.image.toLowerCase().indexOf(q) < 0) return false;
    if (state.mark && (state.mark === 'none' ? m !== '' : m !== state.mark)) return false;
    if (state.ign >= 0 && bin(r.ignored) !== state.ign) return false;
    if (state.conf >= 0 && (r.confidence === null || bin(r.confidence) !== state.conf)) return false;
    return true;
  }

  function refresh() {
    view = ALL.filter(keep);
    view.sort(compare);
    rows.innerHTML = '';
    shown = 0;
    cursor = -1;
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
    $('mark-filter').value = state.mark;
    if ($('search').value !== state.q) $('search').value = state.q;
    document.querySelectorAll('svg.chart g.bar').forEach(function (g) {
      g.classList.toggle('on', +g.getAttribute('data-label') === state.label);
    });
    document.querySelectorAll('svg.chart g.bin').forEach(function (g) {
      var which = g.closest('svg').classList.contains('conf-hist') ? state.conf : state.ign;
      g.classList.toggle('on', +g.getAttribute('data-bin') === which);
    });
    var chips = [];
    if (state.ign >= 0) chips.push(['ign', 'ignored ' + (100 * state.ign / BINS) + '–' + (100 * (state.ign + 1) / BINS) + '%']);
    if (state.conf >= 0) chips.push(['conf', 'confidence ' + (state.conf / BINS).toFixed(2) + '–' + ((state.conf + 1) / BINS).toFixed(2)]);
    $('active').innerHTML = chips.map(function (c) { return '<button type="button" class="clear" data-clear="' + c[0] + '" title="remove this filter">' + esc(c[1]) + ' ✕</button>'; }).join('');
    markCounts();
    writeHash();
  }

  // ---- the view in the URL: sort, filters (a link shows the same view) ------------------
  function writeHash() {
    var p = [];
    if (state.key !== D.sort.key || state.desc !== D.sort.desc) p.push('sort=' + state.key + (state.desc === WORST_DESC[state.key] ? '' : '&dir=' + (state.desc ? 'desc' : 'asc')));
    if (state.label >= 0) p.push('class=' + encodeURIComponent(CLASSES[state.label]));
    if (state.mark) p.push('mark=' + state.mark);
    if (state.ign >= 0) p.push('ignored=' + state.ign);
    if (state.conf >= 0) p.push('confidence=' + state.conf);
    if (state.q) p.push('q=' + encodeURIComponent(state.q));
    var hash = p.length ? '#' + p.join('&') : '';
    if (hash !== location.hash && !(hash === '' && location.hash === '#')) {
      try { history.replaceState(null, '', hash || location.pathname + location.search); } catch (e) { /* file:// in some browsers */ }
    }
  }
  function readHash() {
    var p = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
      var i = kv.indexOf('=');
      if (i > 0) { try { p[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); } catch (e) { /* bad escape */ } }
    });
    if (p.sort && WORST_DESC.hasOwnProperty(p.sort) && (p.sort !== 'iou' || D.has_gt)) {
      state.key = p.sort;
      state.desc = p.dir === 'desc' ? true : p.dir === 'asc' ? false : WORST_DESC[p.sort];
    }
    if (p['class'] !== undefined && CLASSES.indexOf(p['class']) > 0) state.label = CLASSES.indexOf(p['class']);
    if (p.mark && (MARKS.indexOf(p.mark) >= 0 || p.mark === 'none')) state.mark = p.mark;
    if (/^\d+$/.test(p.ignored || '') && +p.ignored < BINS) state.ign = +p.ignored;
    if (/^\d+$/.test(p.confidence || '') && +p.confidence < BINS) state.conf = +p.confidence;
    if (p.q) state.q = p.q;
  }

  function setSort(key, desc) { state.key = key; state.desc = desc === undefined ? WORST_DESC[key] : desc; refresh(); }
  function setLabel(label) { state.label = label; refresh(); }

  // ---- keyboard cursor in the list (j / k / Enter) ---------------------------------------
  function setCursor(k, scroll) {
    var old = rows.querySelector('tr.cur');
    if (old) old.classList.remove('cur');
    if (k < 0 || k >= view.length) { cursor = -1; return; }
    while (k >= shown) renderMore();
    cursor = k;
    var tr = rows.querySelector('tr[data-k="' + k + '"]');
    if (tr) { tr.classList.add('cur'); if (scroll !== false) tr.scrollIntoView({block: 'nearest'}); }
    document.body.setAttribute('data-cursor', k);
  }

  // ---- full-size viewer --------------------------------------------------------------------
  var viewer = $('viewer'), vPhoto = $('v-photo'), vOv = $('v-ov'), vInfo = $('v-info'), stack = viewer.querySelector('.stack');
  var stage = viewer.querySelector('.stage'), layerSel = $('v-layer');
  var showOverlay = true, layer = 'mask';
  var zoom = {s: 1, x: 0, y: 0}, drag = null, dragged = false;

  // Layers of an image: its pseudo mask, with GT its GT and its error map, and the CAM heat
  // map of each label (Grad-CAM and after CAA) when the run saved cams/.
  function layers(r) {
    var out = [['mask', 'pseudo mask']];
    if (r.has_gt) { out.push(['gt', 'ground truth']); out.push(['err', 'errors vs GT']); }
    if (r.heat) r.heat.kinds.forEach(function (kind) {
      r.heat.labels.forEach(function (l) { out.push(['heat:' + kind + ':' + l, 'CAM ' + CLASSES[l] + (kind === 'refined' ? ' after CAA' : '')]); });
    });
    return out;
  }
  function has(r, name) { return layers(r).some(function (x) { return x[0] === name; }); }
  function layerUrl(r, name) {
    if (name === 'gt') return 'overlays-gt/' + enc(r.stem) + '.png';
    if (name === 'err') return 'overlays-err/' + enc(r.stem) + '.png';
    if (name.indexOf('heat:') === 0) { var p = name.split(':'); return 'heat/' + enc(r.stem) + '.' + p[1] + p[2] + '.png'; }
    if (r.overlay === 'mask') return D.mask_base + enc(r.stem) + '.png';  // coloured by #mask-overlay
    return 'overlays/' + enc(r.stem) + '.png';
  }

  function fit(r) {
    var aw = stage.clientWidth - 28, ah = stage.clientHeight - 28;
    var s = Math.min(aw / r.size[0], ah / r.size[1]);
    if (!(s > 0)) s = 1;
    vOv.style.width = Math.max(1, Math.floor(r.size[0] * s)) + 'px';
    vOv.style.height = Math.max(1, Math.floor(r.size[1] * s)) + 'px';
    vOv.classList.toggle('px', s * zoom.s > 1.5);
  }
  function applyZoom() {
    stack.style.transform = zoom.s === 1 ? '' : 'translate(' + zoom.x + 'px,' + zoom.y + 'px) scale(' + zoom.s + ')';
    stage.classList.toggle('zoomed', zoom.s > 1);
    $('v-zoom').textContent = Math.round(100 * zoom.s) + '%';
    if (current >= 0) vOv.classList.toggle('px', zoom.s * parseFloat(vOv.style.width) / view[current].size[0] > 1.5);
  }
  // Zoom by `factor` keeping the point (cx, cy) of the window where it is.
  function zoomAt(factor, cx, cy) {
    var rect = stack.getBoundingClientRect(), s = Math.min(16, Math.max(1, zoom.s * factor));
    if (cx === undefined) { cx = rect.left + rect.width / 2; cy = rect.top + rect.height / 2; }
    if (s === 1) { zoom = {s: 1, x: 0, y: 0}; applyZoom(); return; }
    zoom.x += (cx - rect.left) * (1 - s / zoom.s);
    zoom.y += (cy - rect.top) * (1 - s / zoom.s);
    zoom.s = s;
    applyZoom();
  }
  function resetZoom() { zoom = {s: 1, x: 0, y: 0}; applyZoom(); }

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
    h += '</table><h3>image</h3><table><tr><td>size</td><td>' + r.size[0] + ' × ' + r.size[1] + '</td></tr>';
    if (r.redo) {
      var redo = (D.redos || []).filter(function (x) { return x.n === r.redo; })[0];
      h += '<tr><td>made by</td><td>redo ' + r.redo + '</td></tr>';
      if (redo && redo.changed) Object.keys(redo.changed).forEach(function (k) { h += '<tr><td>' + esc(k) + '</td><td>' + esc(JSON.stringify(redo.changed[k])) + '</td></tr>'; });
    }
    h += '</table>';
    if (layer === 'err') h += '<h3>error map</h3><p class="ekey"><i class="e1"></i>wrong <i class="e2"></i>predicted 255 (left out) <i class="e3"></i>GT void; correct pixels clear</p>';
    if (layer.indexOf('heat:') === 0) h += '<h3>heat map</h3><p class="ekey"><i class="jet"></i>0 → 1 (jet), at 60 % of the opacity</p>';
    return h;
  }

  function markBar(r) {
    var m = markOf(r), note = $('v-note');
    document.querySelectorAll('#v-marks .mb').forEach(function (b) { b.classList.toggle('on', b.getAttribute('data-mark') === m); });
    $('v-marks').setAttribute('data-mark', m);
    note.disabled = !m;
    note.placeholder = m ? 'note (optional)' : 'mark the image to add a note';
    var text = m ? review.marks[r.image].note : '';
    if (document.activeElement !== note || note.value !== text) note.value = text;
  }

  function show(k) {
    if (k < 0 || k >= view.length) return;
    var same = k === current;
    current = k;
    var r = view[k], photo = photoUrl(r);
    if (!has(r, layer)) layer = 'mask';
    layerSel.innerHTML = layers(r).map(function (x) { return '<option value="' + esc(x[0]) + '">' + esc(x[1]) + '</option>'; }).join('');
    layerSel.value = layer;
    vOv.src = layerUrl(r, layer);
    vOv.classList.toggle('keyed', layer === 'mask' && r.overlay === 'mask');
    vOv.classList.toggle('heat', layer.indexOf('heat:') === 0);
    if (photo) { vPhoto.src = photo; vPhoto.hidden = false; } else { vPhoto.removeAttribute('src'); vPhoto.hidden = true; }
    vOv.style.opacity = showOverlay ? ($('v-alpha').value / 100) * (layer.indexOf('heat:') === 0 ? 0.6 : 1) : 0;
    if (!same) resetZoom();
    fit(r);
    $('v-name').textContent = r.image;
    $('v-pos').textContent = (k + 1) + ' / ' + view.length;
    $('v-pos').setAttribute('data-index', k);
    $('v-mask').href = D.mask_base + enc(r.stem) + '.png';
    $('v-which').textContent = layers(r).filter(function (x) { return x[0] === layer; })[0][1];
    vInfo.innerHTML = infoHtml(r);
    markBar(r);
    $('v-prev').disabled = k === 0;
    $('v-next').disabled = k === view.length - 1;
    if (k + 1 < view.length) {  // the next picture, in the layer it will show (none it lacks)
      var n = view[k + 1], pre = new Image();
      pre.src = layerUrl(n, has(n, layer) ? layer : 'mask');
      var p2 = photoUrl(n);
      if (p2) { var pp = new Image(); pp.src = p2; }
    }
  }
  function setLayer(name) {
    if (current < 0 || !has(view[current], name)) return;
    layer = name;
    show(current);
  }
  function toggleLayer(name) { setLayer(layer === name ? 'mask' : name); }
  function cycleHeat() {
    var r = view[current], heat = layers(r).map(function (x) { return x[0]; }).filter(function (x) { return x.indexOf('heat:') === 0; });
    if (!heat.length) { $('v-which').textContent = 'no CAMs for this image (label with --save-cams)'; return; }
    var i = heat.indexOf(layer);
    setLayer(i + 1 < heat.length ? heat[i + 1] : 'mask');
  }
  function open(k) { viewer.hidden = false; document.body.style.overflow = 'hidden'; current = -1; show(k); }
  function close() {
    viewer.hidden = true; document.body.style.overflow = '';
    resetZoom();
    setCursor(current);
  }
  function step(d) {
    var k = current + d;
    if (k < 0 || k >= view.length) return;
    while (k >= shown) renderMore();  // keep the table in step with the viewer
    show(k);
  }

  // ---- events -------------------------------------------------------------------------------
  rows.addEventListener('click', function (e) {
    var tr = e.target.closest('tr');
    var mb = e.target.closest('.mb');
    if (mb && tr) { setCursor(+tr.getAttribute('data-k'), false); setMark(view[+tr.getAttribute('data-k')], mb.getAttribute('data-mark')); return; }
    var chip = e.target.closest('.chip');
    if (chip) { setLabel(+chip.getAttribute('data-label')); return; }
    var opener = e.target.closest('.open');
    if (opener) {
      e.preventDefault();
      var r = view[+tr.getAttribute('data-k')];
      if (opener.classList.contains('gt')) layer = 'gt'; else if (opener.tagName === 'IMG') layer = 'mask';
      open(+tr.getAttribute('data-k'));
    } else if (tr) setCursor(+tr.getAttribute('data-k'), false);
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
  document.querySelectorAll('svg.chart g.bin').forEach(function (g) {
    g.addEventListener('click', function () {
      var b = +g.getAttribute('data-bin'), conf = g.closest('svg').classList.contains('conf-hist');
      if (conf) state.conf = state.conf === b ? -1 : b; else state.ign = state.ign === b ? -1 : b;
      refresh();
    });
  });
  $('active').addEventListener('click', function (e) {
    var b = e.target.closest('[data-clear]');
    if (!b) return;
    state[b.getAttribute('data-clear')] = -1;
    refresh();
  });
  document.querySelectorAll('#review-box .mc').forEach(function (b) {
    b.addEventListener('click', function () {
      var m = b.getAttribute('data-mark');
      state.mark = state.mark === m ? '' : m;
      refresh();
    });
  });
  $('export').addEventListener('click', exportReview);
  $('import-file').addEventListener('change', function (e) { if (e.target.files.length) importReview(e.target.files[0]); e.target.value = ''; });
  $('class-filter').addEventListener('change', function (e) { setLabel(+e.target.value); });
  $('mark-filter').addEventListener('change', function (e) { state.mark = e.target.value; refresh(); });
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
  $('v-alpha').addEventListener('input', function () { if (showOverlay) show(current); });
  layerSel.addEventListener('change', function (e) { setLayer(e.target.value); });
  $('v-zin').addEventListener('click', function () { zoomAt(1.5); });
  $('v-zout').addEventListener('click', function () { zoomAt(1 / 1.5); });
  $('v-zoom').addEventListener('click', resetZoom);
  document.querySelectorAll('#v-marks .mb').forEach(function (b) {
    b.addEventListener('click', function () { setMark(view[current], b.getAttribute('data-mark')); });
  });
  var noteTimer = null;
  $('v-note').addEventListener('input', function (e) {
    clearTimeout(noteTimer);
    var r = view[current];
    noteTimer = setTimeout(function () { setNote(r, e.target.value); }, 300);
  });
  $('v-note').addEventListener('keydown', function (e) {
    if (e.key === 'Enter' || e.key === 'Escape') { clearTimeout(noteTimer); setNote(view[current], e.target.value); e.target.blur(); e.preventDefault(); e.stopPropagation(); }
  });
  stage.addEventListener('click', function (e) { if (e.target === stage && !dragged) close(); dragged = false; });
  stage.addEventListener('wheel', function (e) {
    e.preventDefault();
    zoomAt(e.deltaY < 0 ? 1.25 : 1 / 1.25, e.clientX, e.clientY);
  }, {passive: false});
  stage.addEventListener('dblclick', function (e) { if (stack.contains(e.target)) resetZoom(); });
  stack.addEventListener('mousedown', function (e) {
    if (zoom.s === 1 || e.button !== 0) return;
    e.preventDefault();
    drag = {x: e.clientX - zoom.x, y: e.clientY - zoom.y};
  });
  window.addEventListener('mousemove', function (e) {
    if (!drag) return;
    zoom.x = e.clientX - drag.x; zoom.y = e.clientY - drag.y; dragged = true;
    applyZoom();
  });
  window.addEventListener('mouseup', function () { drag = null; });
  window.addEventListener('resize', function () { if (!viewer.hidden) fit(view[current]); });
  document.addEventListener('keydown', function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    var tag = (e.target.tagName || '').toLowerCase();
    if (tag === 'input' || tag === 'select' || tag === 'textarea') {
      if (e.key === 'Escape' && tag === 'input') e.target.blur();
      return;
    }
    var key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (viewer.hidden) {  // the list
      if (key === 'j' || key === 'ArrowDown' && cursor >= 0) { setCursor(Math.min(view.length - 1, cursor + 1)); e.preventDefault(); }
      else if (key === 'k' || key === 'ArrowUp' && cursor >= 0) { setCursor(Math.max(0, cursor - 1)); e.preventDefault(); }
      else if (key === 'Enter' && cursor >= 0) { layer = 'mask'; open(cursor); e.preventDefault(); }
      else if (MARK_KEYS[key] && cursor >= 0) setMark(view[cursor], MARK_KEYS[key]);
      else if (key === '/') { $('search').focus(); e.preventDefault(); }
      return;
    }
    if (key === 'ArrowRight') { step(1); e.preventDefault(); }
    else if (key === 'ArrowLeft') { step(-1); e.preventDefault(); }
    else if (key === 'Escape') { close(); }
    else if (key === 'o') { $('v-overlay').click(); }
    else if (key === 'g') { if (view[current].has_gt) toggleLayer('gt'); else $('v-which').textContent = 'no GT for this image'; }
    else if (key === 'e') { if (view[current].has_gt) toggleLayer('err'); else $('v-which').textContent = 'no GT for this image'; }
    else if (key === 'c') { cycleHeat(); }
    else if (key === '+' || key === '=') { zoomAt(1.5); }
    else if (key === '-') { zoomAt(1 / 1.5); }
    else if (key === 'z') { resetZoom(); }
    else if (key === 'n') { if (!$('v-note').disabled) { $('v-note').focus(); e.preventDefault(); } }
    else if (MARK_KEYS[key]) { setMark(view[current], MARK_KEYS[key]); }
  });
  if ('IntersectionObserver' in window) {
    new IntersectionObserver(function (entries) {
      if (entries.some(function (x) { return x.isIntersecting; })) renderMore();
    }, {rootMargin: '800px'}).observe($('more'));
  } else {
    $('more').innerHTML = '<button type="button">show more</button>';
    $('more').addEventListener('click', renderMore);
  }
  window.addEventListener('hashchange', function () {
    state = {key: D.sort.key, desc: D.sort.desc, label: -1, q: '', mark: '', ign: -1, conf: -1};
    readHash();
    refresh();
  });

  loadLocal();
  readHash();
  status(served ? 'saved to review.json as you mark' : 'kept in this browser · export to write review.json');
  refresh();
  if (served) {
    fetch(base + 'review.json', {cache: 'no-store'}).then(function (res) { return res.json(); }).then(function (file) {
      var marks = validMarks(file);
      if (marks && !newer(review.saved_at, file.updated_at)) { review = {saved_at: file.updated_at || '', marks: marks}; keepLocal(); refresh(); }
      else if (newer(review.saved_at, file.updated_at)) post();  // marks made while the server was away
      document.body.setAttribute('data-ready', '1');
    }).catch(function () { status('the server does not answer: marks are kept in this browser', true); document.body.setAttribute('data-ready', '1'); });
  } else {
    document.body.setAttribute('data-ready', '1');
  }
})();
"""

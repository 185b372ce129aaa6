"""The report's stylesheet and script, inlined into every page so it opens offline."""

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--card:#fff;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:24px 20px 40px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 6px}
header .meta,.intro,.source,footer{color:var(--muted)}
.source{font-size:12px;margin:6px 0 0}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:16px 0}
section.notes{background:#fffbeb;border-color:#fcd34d}
section.notes p{margin:4px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .label{color:var(--muted);font-size:12px}
.card .value{font-size:22px;font-weight:650}
.card .sub{color:var(--muted);font-size:12px}
figure{margin:8px 0 0}
figcaption{font-weight:600;font-size:13px;margin-bottom:2px}
.grid{display:grid;gap:12px}
.grid.cols-2{grid-template-columns:repeat(2,minmax(0,1fr))}
.grid.cols-3{grid-template-columns:repeat(3,minmax(0,1fr))}
svg.chart{display:block;height:auto;font-family:inherit}
svg .grid{stroke:#eef2f7}
svg .axis{stroke:#94a3b8}
svg .tick{stroke:#94a3b8}
svg .tick-label,svg .row-label,svg .unit,svg .legend text{fill:#475569}
svg .group-rule{stroke:#cbd5e1}
svg .threshold line{stroke:#dc2626;stroke-dasharray:5 4;stroke-width:1.1}
svg .threshold text{fill:#dc2626;font-size:10px}
svg .cell.flagged,svg .flag-sample{stroke:#111827;stroke-width:1.3}
svg .mark.point{stroke:#fff;stroke-width:.6}
.legend{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.legend .key{font:inherit;font-size:12px;border:1px solid var(--line);border-radius:999px;background:#fff;
  padding:2px 10px;display:inline-flex;align-items:center;gap:6px}
.legend button.key{cursor:pointer}
.legend .key.off{opacity:.4;text-decoration:line-through}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;vertical-align:middle;margin-right:4px}
.empty{border:1px dashed #cbd5e1;border-radius:8px;padding:14px 16px;color:#334155;background:#f8fafc}
table{border-collapse:collapse;width:100%;font-size:13px;margin-top:10px}
th,td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
thead th{color:var(--muted);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
#timeline td:first-child{white-space:nowrap}
table.lineage th[scope=row]{color:var(--muted);font-weight:600;white-space:nowrap}
.scroll{overflow-x:auto}
.uri{word-break:break-all}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
ul.evidence{margin:0;padding-left:16px}
.pill{display:inline-block;border-radius:999px;padding:0 8px;font-size:12px;background:#e2e8f0}
.pill.retrain{background:#fef3c7}.pill.registered{background:#ede9fe}.pill.promoted{background:#dcfce7}
.pill.rollback,.pill.rejected,.pill.alert-critical{background:#fee2e2}.pill.alert-warning{background:#ffedd5}
.pill.traffic{background:#e0f2fe}.pill.alias{background:#dbeafe}
footer{font-size:12px;margin-top:18px}
@media (max-width:760px){.grid.cols-2,.grid.cols-3{grid-template-columns:1fr}}
"""

# Legend buttons hide and show a version's series in their section; data-ready tells scripts the page is done.
SCRIPT = """
(function () {
  document.querySelectorAll('button[data-toggle]').forEach(function (button) {
    button.addEventListener('click', function () {
      var off = button.classList.toggle('off');
      var section = button.closest('section');
      var key = CSS.escape(button.getAttribute('data-toggle'));
      section.querySelectorAll('[data-series="' + key + '"]').forEach(function (g) {
        g.style.display = off ? 'none' : '';
      });
    });
  });
  document.body.setAttribute('data-marks', String(document.querySelectorAll('svg .mark').length));
  document.body.setAttribute('data-ready', 'true');
})();
"""

"""``report.html``: the review page of a batch (or of one case), one file that opens from disk.

The page needs no network: CSS and JavaScript are inline, the case data is embedded as JSON, and
the figures are referenced by paths relative to the page (``<case id>/report.png``, ...), loaded only
when a row is expanded, so a page for a thousand cases stays small and fast.

What an annotator can do on it (docs/BATCH.md "Reviewing a batch"):

* one table row per case: id, status, success flag, confidence, metric, time, error/warnings;
  click a header to sort; the default order puts the cases to look at first on top: failed, then
  unknown confidence or success, then lowest confidence, then flagged unsuccessful;
* click a row to expand it: ``report.png``, a before/after flicker and slider (``qc_before.png`` /
  ``qc_after.png``), the case folder and a copy-paste command that opens the case in 3D Slicer;
* mark each case accepted or rejected (with a note); marks are kept in the browser's localStorage
  and exported as ``review.csv`` through a download link, so the review itself is saved.

The fields are read defensively: ``success`` may be true, false or null ("not calibrated"),
``confidence`` and ``success_note`` may be absent; whatever exists is shown, null as "unknown".
"""
from __future__ import annotations

import hashlib
import html
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from .volume import atomic_write

FIGURES = {"report": "report.png", "before": "qc_before.png", "after": "qc_after.png"}
#: outputs the Slicer command loads (relative to the case folder)
_CET1_ON_AXIAL = "coronal_ceT1_on_axial.nii.gz"
_LABELS_ON_AXIAL = "coronal_labels_on_axial.nii.gz"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _num(v) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def _flag(v) -> Optional[bool]:
    """true/false/None from a bool, a 'true'/'false' string, or anything else (None = unknown)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    return None


def slicer_command(case_dir: Path, axial: Optional[str]) -> dict:
    """Python for the Slicer console, and the same as a shell command, to open one case for review."""
    case_dir = Path(case_dir)
    lines = []
    if axial:
        lines.append(f"t2 = slicer.util.loadVolume({json.dumps(str(axial))})")
    lines.append(f"ce = slicer.util.loadVolume({json.dumps(str(case_dir / _CET1_ON_AXIAL))})")
    if (case_dir / _LABELS_ON_AXIAL).exists():
        lines.append(f"lab = slicer.util.loadLabelVolume({json.dumps(str(case_dir / _LABELS_ON_AXIAL))})")
    if axial:
        lines.append("slicer.util.setSliceViewerLayers(background=t2, foreground=ce, foregroundOpacity=0.5)")
    py = "; ".join(lines)
    shell = "Slicer --python-code '" + py.replace("'", "'\\''") + "'"
    return {"python": py, "shell": shell}


def case_row_from_dicts(case_id: str, transform: dict, report: dict, case_dir, page_dir, *,
                        status: str = "done", seconds=None, error: str = "", warnings: str = "",
                        shown_dir=None) -> dict:
    """One table row from a case's transform.json / report.json (any may be empty).

    ``shown_dir``: where the case folder will be when the page is read (the batch runs a case in a
    staging folder and renames it afterwards); default ``case_dir``.
    """
    case_dir, page_dir = Path(case_dir), Path(page_dir)
    shown = Path(os.path.abspath(shown_dir if shown_dir is not None else case_dir))
    reg = report.get("registration") if isinstance(report.get("registration"), dict) else {}
    success = _flag(transform.get("success", reg.get("success")))
    conf = _num(transform.get("confidence", reg.get("confidence")))
    note = transform.get("success_note", reg.get("success_note")) or ""
    metric = _num(transform.get("metric", reg.get("metric")))
    secs = _num(seconds) if seconds is not None else _num(transform.get("seconds", report.get("total_seconds")))
    figs = {}
    for key, name in FIGURES.items():
        if (case_dir / name).is_file():
            figs[key] = Path(os.path.relpath(case_dir / name, page_dir)).as_posix()
    inputs = report.get("inputs") if isinstance(report.get("inputs"), dict) else {}
    row = {
        "id": str(case_id), "status": status, "success": success, "confidence": conf, "note": str(note),
        "metric": metric, "metric_name": str(transform.get("metric_name") or ""), "method": str(transform.get("method") or ""),
        "seconds": secs, "error": str(error or ""), "warnings": str(warnings or ""),
        "dir": str(shown), "figures": figs,
    }
    for k in ("report_png_error",):
        if report.get(k):
            row["warnings"] = "; ".join(x for x in (row["warnings"], f"figure: {report[k]}") if x)
    if status in ("done", "skipped") and (case_dir / _CET1_ON_AXIAL).exists():
        row["slicer"] = slicer_command(shown, inputs.get("axial"))
    return row


def write_case_page(case_dir, case_id: str, shown_dir=None) -> Path:
    """(Re)writes ``case_dir/report.html`` for one finished case from its transform.json/report.json."""
    case_dir = Path(case_dir)
    row = case_row_from_dicts(case_id, _read_json(case_dir / "transform.json"), _read_json(case_dir / "report.json"),
                              case_dir, case_dir, shown_dir=shown_dir)
    return write_report(case_dir / "report.html", [row], title=f"mmreg: case {case_id}")


def rows_from_summary(out, summary_rows: Iterable[dict]) -> list[dict]:
    """Table rows for a batch folder from its summary rows (dicts with the summary.csv columns)."""
    out = Path(out)
    rows = []
    for s in summary_rows:
        cid = s.get("case_id", "")
        case_dir = out / cid
        finished = s.get("status") in ("done", "skipped")
        transform = _read_json(case_dir / "transform.json") if finished else {}
        rep = _read_json(case_dir / "report.json") if finished else {}
        if not transform and finished:
            transform = {"success": s.get("success"), "metric": s.get("metric")}
        transform.setdefault("success", s.get("success"))
        rows.append(case_row_from_dicts(cid, transform, rep, case_dir, out, status=s.get("status", ""),
                                        seconds=s.get("seconds") or None, error=s.get("error", ""),
                                        warnings=s.get("warnings", "")))
    return rows


def write_report(path, rows: list[dict], title: str = "mmreg review") -> Path:
    """Writes the page atomically; returns its path."""
    path = Path(path)
    key = hashlib.sha256((str(path.resolve().parent) + "\0" + "\0".join(r["id"] for r in rows)).encode()).hexdigest()[:16]
    data = json.dumps({"title": title, "key": key, "rows": rows}, separators=(",", ":"))
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"), suffix=".html")


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#1d1d1f;background:#fafafa}
h1{font-size:19px;margin:0 0 4px}
#counts{color:#555;margin-bottom:10px}
.bar{display:flex;gap:10px;align-items:center;margin:8px 0;flex-wrap:wrap}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f3;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th.sorted-asc::after{content:" \25B2"} th.sorted-desc::after{content:" \25BC"}
tr.case{cursor:pointer} tr.case:hover{background:#f5f8ff}
tr.case.accepted td:first-child{border-left:4px solid #2a9d3a} tr.case.rejected td:first-child{border-left:4px solid #c62828}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.st-failed{color:#b71c1c;font-weight:600} .st-pending{color:#8a6d00}
.ok-true{color:#1b7e2c} .ok-false{color:#b71c1c;font-weight:600} .ok-null{color:#8a6d00}
.err{max-width:420px;color:#b71c1c;font-size:12px} .warn{color:#8a6d00;font-size:12px}
.detail td{background:#f7f7f9;padding:12px}
.detail img.report{max-width:100%;border:1px solid #ccc}
.flick{position:relative;display:inline-block;margin-top:10px}
.flick img{display:block;max-width:100%} .flick img.top{position:absolute;left:0;top:0}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
textarea.cmd{width:100%;height:48px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px}
button{font:inherit;padding:2px 8px;cursor:pointer}
button.acc.on{background:#2a9d3a;color:#fff} button.rej.on{background:#c62828;color:#fff}
input.note{width:150px}
</style></head><body>
<h1 id="title"></h1>
<div id="counts"></div>
<div class="bar">
 <label>show <select id="filter"><option value="all">all cases</option><option value="unreviewed">not reviewed</option>
 <option value="failed">failed</option><option value="accepted">accepted</option><option value="rejected">rejected</option></select></label>
 <input id="search" placeholder="filter by case id" size="18">
 <a id="export" href="#" download="review.csv">export review.csv</a>
 <button id="sortdefault" type="button">review order</button>
 <span class="warn" id="storage"></span>
</div>
<table id="cases"><thead><tr>
 <th data-key="id">case</th><th data-key="status">status</th><th data-key="success">success</th>
 <th data-key="confidence">confidence</th><th data-key="metric">metric</th><th data-key="seconds">time (s)</th>
 <th data-key="error">error / warnings</th><th data-key="decision">review</th></tr></thead>
<tbody></tbody></table>
<script type="application/json" id="mmreg-data">__DATA__</script>
<script>
"use strict";
(function () {
  var DATA = JSON.parse(document.getElementById("mmreg-data").textContent);
  var rows = DATA.rows, KEY = "mmreg-review:" + DATA.key, marks = {};
  try { marks = JSON.parse(window.localStorage.getItem(KEY) || "{}") || {}; } catch (e) {
    document.getElementById("storage").textContent = "(the browser does not keep marks for files here: export the CSV before closing)";
  }
  var sortKey = null, sortDir = 1, open = {};
  document.getElementById("title").textContent = DATA.title;

  function fmt(v, d) { return v === null || v === undefined ? "" : Number(v).toFixed(d); }
  function flagText(v) { return v === true ? "true" : v === false ? "false" : "unknown"; }
  function statusRank(r) { return r.status === "failed" ? 0 : r.status === "pending" ? 1 : 2; }
  function successRank(r) { return r.success === false ? 0 : r.success === null ? 1 : 2; }
  // review order: failed, then unknown confidence, then lowest confidence; ties: flagged, unknown, success
  function reviewCmp(a, b) {
    var d = statusRank(a) - statusRank(b); if (d) return d;
    var ca = a.confidence, cb = b.confidence;
    if ((ca === null) !== (cb === null)) return ca === null ? -1 : 1;
    if (ca !== null && ca !== cb) return ca - cb;
    d = successRank(a) - successRank(b); if (d) return d;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  }
  function value(r, k) {
    if (k === "decision") return (marks[r.id] || {}).decision || "";
    if (k === "success") return successRank(r);
    if (k === "status") return statusRank(r);
    return r[k];
  }
  function keyCmp(k) {
    return function (a, b) {
      var va = value(a, k), vb = value(b, k);
      var na = va === null || va === undefined || va === "", nb = vb === null || vb === undefined || vb === "";
      if (na || nb) return na && nb ? reviewCmp(a, b) : na ? -1 : 1;   // unknown first, both ways
      if (typeof va === "number" && typeof vb === "number") return sortDir * (va - vb) || reviewCmp(a, b);
      va = String(va); vb = String(vb);
      return sortDir * (va < vb ? -1 : va > vb ? 1 : 0) || reviewCmp(a, b);
    };
  }
  function save() {
    try { window.localStorage.setItem(KEY, JSON.stringify(marks)); } catch (e) { /* export still works */ }
    updateExport(); counts();
  }
  function csvCell(v) { v = v === null || v === undefined ? "" : String(v); return /[",\n\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
  function reviewCsv() {
    var out = [["case_id", "decision", "note", "reviewed_utc", "status", "success", "confidence", "metric"].join(",")];
    rows.forEach(function (r) {
      var m = marks[r.id] || {};
      out.push([r.id, m.decision || "", m.note || "", m.time || "", r.status, flagText(r.success),
                r.confidence === null ? "" : r.confidence, r.metric === null ? "" : r.metric].map(csvCell).join(","));
    });
    return out.join("\n") + "\n";
  }
  var exportUrl = null;
  function updateExport() {
    if (exportUrl) URL.revokeObjectURL(exportUrl);
    exportUrl = URL.createObjectURL(new Blob([reviewCsv()], {type: "text/csv"}));
    document.getElementById("export").href = exportUrl;
  }
  function counts() {
    var n = rows.length, f = 0, a = 0, j = 0;
    rows.forEach(function (r) { if (r.status === "failed") f++; var d = (marks[r.id] || {}).decision; if (d === "accept") a++; if (d === "reject") j++; });
    document.getElementById("counts").textContent = n + " cases, " + f + " failed; reviewed " + (a + j) + " (" + a + " accepted, " + j + " rejected)";
  }
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
  function td(text, cls) { return el("td", cls, text); }

  function detail(r) {
    var tr = el("tr", "detail"), cell = el("td"); cell.colSpan = 8; tr.appendChild(cell);
    if (r.note) cell.appendChild(el("div", "warn", "success note: " + r.note));
    if (r.method) cell.appendChild(el("div", "", "method " + r.method + (r.metric_name ? ", metric = " + r.metric_name : "")));
    cell.appendChild(el("div", "mono", "folder: " + r.dir));
    if (r.slicer) {
      cell.appendChild(el("div", "", "open in 3D Slicer (shell; or paste the second box into Slicer's Python console):"));
      [r.slicer.shell, r.slicer.python].forEach(function (c) {
        var t = el("textarea", "cmd"); t.readOnly = true; t.value = c;
        t.addEventListener("focus", function () { t.select(); }); cell.appendChild(t);
      });
    }
    if (r.figures.before && r.figures.after) {
      var box = el("div"), ctl = el("div", "bar");
      var lab = el("label", "", "before "), slider = el("input"); slider.type = "range"; slider.min = 0; slider.max = 100; slider.value = 100;
      lab.appendChild(slider); lab.appendChild(document.createTextNode(" after"));
      var fl = el("button", "flicker", "flicker"); fl.type = "button";
      ctl.appendChild(lab); ctl.appendChild(fl); box.appendChild(ctl);
      var wrap = el("div", "flick"), b = el("img", "bottom"), a = el("img", "top");
      b.alt = "before (headers)"; a.alt = "after (registered)"; b.src = r.figures.before; a.src = r.figures.after;
      wrap.appendChild(b); wrap.appendChild(a); box.appendChild(wrap); cell.appendChild(box);
      slider.addEventListener("input", function () { a.style.opacity = slider.value / 100; });
      var timer = null;
      fl.addEventListener("click", function (ev) {
        ev.stopPropagation();
        if (timer) { clearInterval(timer); timer = null; fl.textContent = "flicker"; a.style.opacity = slider.value / 100; return; }
        fl.textContent = "stop"; timer = setInterval(function () { a.style.opacity = a.style.opacity === "0" ? "1" : "0"; }, 600);
      });
    }
    if (r.figures.report) {
      var img = el("img", "report"); img.alt = "report.png of " + r.id; img.src = r.figures.report; cell.appendChild(img);
    } else if (r.status !== "failed") cell.appendChild(el("div", "warn", "no report.png in this case folder"));
    tr.addEventListener("click", function (ev) { ev.stopPropagation(); });
    return tr;
  }

  function render() {
    var list = rows.slice(), f = document.getElementById("filter").value, q = document.getElementById("search").value.toLowerCase();
    list.sort(sortKey ? keyCmp(sortKey) : reviewCmp);
    var tb = document.querySelector("#cases tbody"); tb.textContent = "";
    list.forEach(function (r) {
      var m = marks[r.id] || {};
      if (q && r.id.toLowerCase().indexOf(q) < 0) return;
      if (f === "unreviewed" && m.decision) return;
      if (f === "failed" && r.status !== "failed") return;
      if ((f === "accepted" && m.decision !== "accept") || (f === "rejected" && m.decision !== "reject")) return;
      var tr = el("tr", "case" + (m.decision === "accept" ? " accepted" : m.decision === "reject" ? " rejected" : ""));
      tr.dataset.id = r.id;
      tr.appendChild(td(r.id));
      tr.appendChild(td(r.status, "st-" + r.status));
      tr.appendChild(td(r.status === "failed" ? "" : flagText(r.success), "ok-" + String(r.success)));
      tr.appendChild(td(r.confidence === null ? (r.status === "failed" ? "" : "unknown") : fmt(r.confidence, 2), "num"));
      tr.appendChild(td(fmt(r.metric, 4), "num"));
      tr.appendChild(td(fmt(r.seconds, 1), "num"));
      var e = td("", "");
      if (r.error) e.appendChild(el("div", "err", r.error));
      if (r.warnings) e.appendChild(el("div", "warn", r.warnings));
      if (r.note && !r.error) e.appendChild(el("div", "warn", r.note));
      tr.appendChild(e);
      var rv = td(""), acc = el("button", "acc" + (m.decision === "accept" ? " on" : ""), "accept"),
          rej = el("button", "rej" + (m.decision === "reject" ? " on" : ""), "reject"), note = el("input", "note");
      acc.type = rej.type = "button"; note.placeholder = "note"; note.value = m.note || "";
      function mark(d) { return function (ev) { ev.stopPropagation(); var cur = marks[r.id] || {};
        cur.decision = cur.decision === d ? "" : d; cur.time = new Date().toISOString(); marks[r.id] = cur; save(); render(); }; }
      acc.addEventListener("click", mark("accept")); rej.addEventListener("click", mark("reject"));
      note.addEventListener("click", function (ev) { ev.stopPropagation(); });
      note.addEventListener("change", function () { var cur = marks[r.id] || {}; cur.note = note.value; cur.time = new Date().toISOString(); marks[r.id] = cur; save(); });
      rv.appendChild(acc); rv.appendChild(rej); rv.appendChild(note); tr.appendChild(rv);
      tr.addEventListener("click", function () { open[r.id] = !open[r.id]; render(); });
      tb.appendChild(tr);
      if (open[r.id]) tb.appendChild(detail(r));
    });
    document.querySelectorAll("#cases th").forEach(function (th) {
      th.classList.remove("sorted-asc", "sorted-desc");
      if (th.dataset.key === sortKey) th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
    });
  }
  document.querySelectorAll("#cases th").forEach(function (th) {
    th.addEventListener("click", function () {
      if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
      render();
    });
  });
  document.getElementById("sortdefault").addEventListener("click", function () { sortKey = null; sortDir = 1; render(); });
  document.getElementById("filter").addEventListener("change", render);
  document.getElementById("search").addEventListener("input", render);
  if (rows.length === 1) open[rows[0].id] = true;
  updateExport(); counts(); render();
})();
</script></body></html>
"""

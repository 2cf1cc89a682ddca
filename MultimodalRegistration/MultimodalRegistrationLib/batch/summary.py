"""Results of a batch: ``summary.csv`` (or one per shard), the merged summary, and ``report.html``."""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..volume import atomic_write
from .layout import REPORT, SUMMARY, SUMMARY_COLUMNS


@dataclass
class CaseResult:
    case_id: str
    status: str                      # done | skipped (finished earlier) | failed | pending
    success: Optional[bool] = None   # the registration's own success flag (None: unknown / not calibrated)
    metric: Optional[float] = None
    seconds: Optional[float] = None
    error: str = ""
    warnings: str = ""
    out_dir: str = ""
    confidence: Optional[float] = None   # transform.json "confidence" when the pipeline gives one


def _cell_flag(v) -> str:
    return "" if v is None else str(bool(v)).lower()


def write_summary(out: Path, cases: list, results: dict, name: str = SUMMARY) -> Path:
    """Writes OUT/<name> (one row per case, in ``cases`` order) atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for c in cases:
        r = results.get(c.case_id) or CaseResult(c.case_id, "pending")
        w.writerow([r.case_id, r.status, _cell_flag(r.success),
                    "" if r.metric is None else f"{r.metric:.8g}",
                    "" if r.seconds is None else f"{r.seconds:.3f}", r.error, r.warnings, r.out_dir,
                    "" if r.confidence is None else f"{r.confidence:.6g}"])
    text = buf.getvalue()
    return atomic_write(Path(out) / name, lambda tmp: Path(tmp).write_text(text), suffix=".csv")


def read_summary(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_batch_report(out: Path, summary_rows: list[dict], name: str = REPORT, title: Optional[str] = None) -> Path:
    """OUT/report.html for the rows of a summary (each case's figures referenced relatively)."""
    from ..report_html import rows_from_summary, write_report

    rows = rows_from_summary(out, summary_rows)
    return write_report(Path(out) / name, rows, title=title or f"mmreg batch: {Path(out).resolve().name} "
                                                                  f"({len(rows)} cases)")


def summarize(results: list[CaseResult], out: Path, summary_name: str = SUMMARY) -> tuple[int, str]:
    """(exit code, one-line summary): 0 when every case finished, 1 when any failed.

    A registration that ran but flagged itself unsuccessful counts as finished (success=False).
    """
    failed = [r for r in results if r.status == "failed"]
    pending = [r for r in results if r.status == "pending"]
    done = [r for r in results if r.status in ("done", "skipped")]
    flagged = [r for r in done if r.success is False]
    skipped = [r for r in results if r.status == "skipped"]
    msg = (f"{len(done)}/{len(results)} cases finished ({len(skipped)} already done earlier), "
           f"{len(failed)} failed, {len(flagged)} flagged unsuccessful -> {Path(out) / summary_name}")
    return (1 if failed or pending else 0), msg


_SHARD_RE = re.compile(r"^summary-shard-(\d+)-of-(\d+)\.csv$")


def merge_shards(out) -> tuple[Path, Path, list[dict]]:
    """Combines OUT/summary-shard-K-of-N.csv (K = 1..N) into OUT/summary.csv and OUT/report.html.

    Rows come back in manifest order (shard K holds manifest positions K-1, K-1+N, ...). Refuses
    (InputError) when no shard summary exists, when they disagree on N, or when one is missing.
    Returns (summary path, report path, rows).
    """
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"--merge: '{out}' is not a folder")
    found: dict[int, dict[int, Path]] = {}
    for p in out.iterdir():
        m = _SHARD_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise InputError(f"--merge: no summary-shard-K-of-N.csv in '{out}' (run the shards with --shard K/N first)")
    if len(found) > 1:
        raise InputError(f"--merge: '{out}' holds shard summaries of different shard counts "
                         f"({', '.join(f'N={n}' for n in sorted(found))}); remove the stale ones")
    (n, shards), = found.items()
    missing = [k for k in range(1, n + 1) if k not in shards]
    if missing:
        raise InputError(f"--merge: shard(s) {', '.join(f'{k}/{n}' for k in missing)} have no summary in '{out}' "
                         f"yet (not started, or still running their first case)")
    per = {k: read_summary(shards[k]) for k in range(1, n + 1)}
    rows = []
    for i in range(max(len(v) for v in per.values())):
        for k in range(1, n + 1):
            if i < len(per[k]):
                rows.append(per[k][i])
    seen = set()
    for r in rows:
        if r.get("case_id") in seen:
            raise InputError(f"--merge: case {r.get('case_id')!r} appears in two shard summaries")
        seen.add(r.get("case_id"))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") or "" for k in SUMMARY_COLUMNS})
    text = buf.getvalue()
    summary = atomic_write(out / SUMMARY, lambda tmp: Path(tmp).write_text(text), suffix=".csv")
    report = write_batch_report(out, rows)
    return summary, report, rows


def merge_message(rows: list[dict], out: Path) -> tuple[int, str]:
    failed = sum(r.get("status") == "failed" for r in rows)
    pending = sum(r.get("status") == "pending" for r in rows)
    done = sum(r.get("status") in ("done", "skipped") for r in rows)
    msg = (f"merged {len(rows)} cases: {done} finished, {failed} failed, {pending} pending -> "
           f"{Path(out) / SUMMARY}, {Path(out) / REPORT}")
    return (1 if failed or pending else 0), msg

"""File names inside a batch output folder (stdlib only)."""
from __future__ import annotations

MARKER = ".mmreg_done.json"
SUMMARY = "summary.csv"
REPORT = "report.html"
STAGING = ".mmreg_staging"
LOGS = ".mmreg_logs"
LOCK = ".mmreg_batch.lock"
SUMMARY_COLUMNS = ("case_id", "status", "success", "metric", "seconds", "error", "warnings", "out_dir",
                   "confidence")


def shard_summary_name(k: int, n: int) -> str:
    """summary-shard-K-of-N.csv: the summary of shard K of N (1 <= K <= N)."""
    return f"summary-shard-{k}-of-{n}.csv"


def shard_report_name(k: int, n: int) -> str:
    return f"report-shard-{k}-of-{n}.html"


def shard_lock_name(k: int, n: int) -> str:
    return f".mmreg_batch-shard-{k}-of-{n}.lock"

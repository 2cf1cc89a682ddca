"""``mmreg batch``: register many cases, resumably, in parallel, with a ``summary.csv``.

Input is a manifest CSV or a folder laid out by the documented naming scheme (docs/BATCH.md).
Every case writes the output contract of ``mmreg register`` under ``OUT/<case id>/``.

Reliability rules (docs/BATCH.md explains them for users):

* A case runs in a staging folder ``OUT/.mmreg_staging/<id>/`` and is renamed to ``OUT/<id>/`` only
  after every output *and* the completion marker ``.mmreg_done.json`` exist, so ``OUT/<id>/`` never
  holds a half-written case. The marker holds the SHA-256 of the input files' bytes, the parameters
  and the tool version; a re-run skips cases whose marker matches and re-runs (after removing the
  stale folder) those whose marker is missing or differs.
* One failing case never stops the batch: Python errors are caught per case, a worker process that
  dies (out of memory, segfault) fails only the cases it was running; the rest go on.
* ``summary.csv`` is rewritten atomically after every case.
* Exit code: 0 when every case finished (a registration flagged unsuccessful still counts as
  finished, with ``success=False``), 1 when some cases failed, 2 for a usage/manifest error,
  130 when interrupted (re-run the same command to resume).
* ``--executor dask`` runs the same cases on a Dask cluster; ``--shard K/N`` runs 1/N of the
  manifest into a shared OUT and ``--merge OUT`` combines the shards' summaries.

The package (one job per module): ``layout`` (file names), ``manifest`` (cases, ids, shards),
``markers`` (hashing, completion marker), ``resources`` (cores, memory, --jobs plan), ``worker``
(one case: staging, pipeline, marker, rename), ``local`` and ``dask_executor`` (the executors),
``progress`` (events, JSON lines, tqdm bar), ``summary`` (summary.csv, --merge, report.html),
``runner`` (:func:`run_batch`); this file holds the CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..progress import progress_from_args
from ..threads import set_threads
from .layout import LOCK, LOGS, MARKER, REPORT, STAGING, SUMMARY, SUMMARY_COLUMNS, shard_summary_name
from .manifest import (COLUMN_ALIASES, FOLDER_NAMES, REQUIRED_ROLES, ROLES, Case, ManifestError, check_cases,
                       load_cases, parse_shard, read_manifest, scan_folder, shard_cases, validate_case_id)
from .markers import case_hash, file_sha256, finished_marker, params_dict, read_marker
from .progress import Tracker, bar_events, json_events
from .resources import (BASE_WORKER_BYTES, BYTES_FACTOR, available_cpus, available_memory_bytes,
                        estimate_case_bytes, plan_jobs)
from .runner import EXECUTORS, run_batch
from .summary import CaseResult, merge_message, merge_shards, read_summary, summarize, write_summary
from .worker import Task, run_one

__all__ = [
    "LOCK", "LOGS", "MARKER", "REPORT", "STAGING", "SUMMARY", "SUMMARY_COLUMNS", "COLUMN_ALIASES", "FOLDER_NAMES",
    "REQUIRED_ROLES", "ROLES", "Case", "CaseResult", "ManifestError", "Task", "Tracker", "EXECUTORS",
    "BASE_WORKER_BYTES", "BYTES_FACTOR", "available_cpus", "available_memory_bytes", "bar_events", "case_hash",
    "check_cases", "estimate_case_bytes", "file_sha256", "finished_marker", "json_events", "load_cases",
    "merge_shards", "params_dict", "parse_shard", "plan_jobs", "read_manifest", "read_marker", "read_summary",
    "run_batch", "run_one", "scan_folder", "set_threads", "shard_cases", "summarize", "validate_case_id",
    "write_summary", "add_arguments", "run_cli",
]


def add_arguments(parser) -> None:
    from ..cli import add_pipeline_arguments

    parser.add_argument("input", nargs="?", help="manifest CSV (case_id,coronal,axial[,coronal_labels,axial_labels]) "
                                                 "or a folder laid out as docs/BATCH.md describes")
    parser.add_argument("--out", "-o", help="output folder: OUT/<case id>/, OUT/summary.csv, OUT/report.html")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="cases run in parallel processes (capped by CPU cores and memory; default 1); with "
                             "--executor dask and no address: the LocalCluster's worker count")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per case (default: CPU cores // jobs). Results are bit-identical "
                             "only for the same thread count")
    parser.add_argument("--force", action="store_true", help="re-run finished cases too")
    parser.add_argument("--case-timeout", type=float, default=None, metavar="SECONDS",
                        help="stop a case still running after this many seconds and record it as failed "
                             "(cases then run in worker processes, also with --jobs 1)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local (default): worker processes on this machine; dask: a Dask distributed "
                             "cluster (--dask-address) or, without an address, a LocalCluster of --jobs workers")
    parser.add_argument("--dask-address", metavar="tcp://HOST:PORT", default=None,
                        help="scheduler of a running Dask cluster whose workers see OUT and the inputs at the same "
                             "paths (with --executor dask)")
    parser.add_argument("--shard", metavar="K/N", default=None,
                        help="run only shard K of N of the manifest (positions K-1, K-1+N, ...), e.g. for a SLURM "
                             "array; writes summary-shard-K-of-N.csv. Combine with: mmreg batch --merge OUT")
    parser.add_argument("--merge", metavar="OUT", default=None,
                        help="combine OUT/summary-shard-*-of-N.csv into OUT/summary.csv and OUT/report.html "
                             "(no cases are run; give no INPUT)")
    parser.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    add_pipeline_arguments(parser)


def run_cli(args) -> int:
    from ..cli import params_from_args

    if args.merge:
        if args.input or args.out or args.shard:
            raise ManifestError("--merge OUT takes no INPUT, --out or --shard")
        _, _, rows = merge_shards(args.merge)
        code, msg = merge_message(rows, Path(args.merge))
        print(msg)
        return code
    if not args.input or not args.out:
        raise ManifestError("give INPUT (a manifest CSV or a folder) and --out OUT (or --merge OUT)")
    if args.jobs < 1:
        raise ManifestError("--jobs must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ManifestError("--threads must be at least 1")
    shard = parse_shard(args.shard) if args.shard else None
    cases = load_cases(args.input)
    params = params_from_args(args)
    emit = progress_from_args(args, json_renderer=json_events, bar_renderer=bar_events)
    summary_name = shard_summary_name(*shard) if shard else SUMMARY
    try:
        results = run_batch(cases, args.out, params, jobs=args.jobs, progress=emit, force=args.force,
                            threads=args.threads, case_timeout=args.case_timeout, executor=args.executor,
                            dask_address=args.dask_address, shard=shard, report=not args.no_report,
                            note=lambda n: print(f"mmreg batch: note: {n}", file=sys.stderr))
    except KeyboardInterrupt:
        print(f"mmreg batch: interrupted; {Path(args.out) / summary_name} lists what finished. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 130
    code, msg = summarize(results, Path(args.out), summary_name)
    print(msg)
    for r in results:
        if r.status == "failed":
            print(f"mmreg batch: case {r.case_id} failed: {r.error}", file=sys.stderr)
    return code

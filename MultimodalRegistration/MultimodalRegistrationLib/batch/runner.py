"""The batch: lock the output folder, skip finished cases, run the rest on an executor, write the summary."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError, MMRegError
from .layout import LOCK, REPORT, STAGING, SUMMARY, shard_lock_name, shard_report_name, shard_summary_name
from .manifest import Case, ManifestError, check_cases, shard_cases
from .markers import case_hash, finished_marker, remove_tree
from .progress import Tracker
from ..threads import set_threads
from .resources import plan_tasks
from .summary import CaseResult, read_summary, write_batch_report, write_summary
from .worker import Task, run_one, staging_dir

EXECUTORS = ("local", "dask")


class OutLock:
    """Advisory locks on OUT: a whole-manifest batch holds OUT/.mmreg_batch.lock exclusively; a shard
    holds it shared plus its own shard lock exclusively, so shards of one manifest run side by side
    while two batches (or two copies of one shard) writing the same cases are refused."""

    def __init__(self, out: Path, shard: Optional[tuple[int, int]] = None):
        self.paths = [(out / LOCK, shard is None)]
        if shard is not None:
            self.paths.append((out / shard_lock_name(*shard), True))
        self.files = []

    def __enter__(self):
        for path, exclusive in self.paths:
            f = open(path, "a+")
            try:
                import fcntl
                fcntl.flock(f.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except ImportError:
                pass
            except OSError:
                f.close()
                self.__exit__()
                raise MMRegError(f"another 'mmreg batch' is writing into '{path.parent}' (it holds {path.name}); "
                                 f"wait for it to finish") from None
            self.files.append(f)
        return self

    def __exit__(self, *exc):
        for f in self.files:
            f.close()
        self.files = []


def run_batch(cases: list[Case], out, params=None, *, jobs: int = 1, run_case: Optional[Callable] = None,
              progress: Optional[Callable[[dict], None]] = None, force: bool = False,
              note: Optional[Callable[[str], None]] = None, threads: Optional[int] = None,
              case_timeout: Optional[float] = None, executor: str = "local", dask_address: Optional[str] = None,
              shard: Optional[tuple[int, int]] = None, report: bool = True) -> list[CaseResult]:
    """Runs every case (skipping those already finished with the same hash) and writes summary.csv.

    ``run_case`` (default :func:`pipeline.run_case`) must be a module-level function when jobs > 1
    or with Dask (it is pickled to the workers). ``progress`` receives event dicts (see
    :class:`Tracker`); ``note`` one-line notices (e.g. --jobs lowered to fit the memory). ``threads``:
    torch threads per case (default: cores // jobs); with jobs == 1 the cases run in this process,
    whose torch thread count is set for the batch and restored afterwards. ``case_timeout``
    (seconds): a case still running after this long is stopped (its worker process is killed) and
    recorded as failed; with a timeout, local cases always run in worker processes, even with jobs == 1.

    ``executor``: "local" (this machine) or "dask" (a Dask distributed cluster at ``dask_address``,
    or a LocalCluster of ``jobs`` worker processes when no address is given; see dask_executor.py).
    ``shard`` = (K, N): run only shard K of N (:func:`manifest.shard_cases`) and write
    summary-shard-K-of-N.csv / report-shard-K-of-N.html instead of summary.csv / report.html
    (``mmreg batch --merge OUT`` combines them). ``report``: write the HTML review page at the end.

    Returns one :class:`CaseResult` per case (of the shard), in manifest order. KeyboardInterrupt
    propagates after the summary has been written.
    """
    out = Path(os.path.abspath(out))
    if case_timeout is not None and not case_timeout > 0:
        raise InputError(f"the case timeout must be a positive number of seconds, not {case_timeout}")
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if dask_address and executor != "dask":
        raise InputError("--dask-address needs --executor dask")
    if params is None:
        from ..pipeline import Params
        params = Params()
    check_cases(cases, out)   # all of them, also with a shard: ids must be unique over the manifest
    summary_name, report_name = SUMMARY, REPORT
    if shard is not None:
        k, n = shard
        cases = shard_cases(cases, k, n)
        summary_name, report_name = shard_summary_name(k, n), shard_report_name(k, n)
        if not cases:
            raise ManifestError(f"shard {k}/{n} has no cases (the manifest has fewer than {k} cases)")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, CaseResult] = {}
    tracker = Tracker(len(cases), progress)
    run_id = uuid.uuid4().hex
    with OutLock(out, shard):
        for c in cases:   # leftovers of a crashed run: never mistaken for outputs (only this batch's cases)
            remove_tree(staging_dir(out, c.case_id))
        todo: list[Task] = []
        for c in cases:
            tracker.event(case=c.case_id, case_stage="hash")
            h, digests = case_hash(c, params)
            m = None if force else finished_marker(out / c.case_id, h)
            if m is not None:
                res = CaseResult(c.case_id, "skipped", success=m.get("success"), metric=m.get("metric"),
                                 seconds=m.get("seconds"), warnings=m.get("warnings", ""),
                                 out_dir=str(out / c.case_id), confidence=m.get("confidence"))
                results[c.case_id] = res
                tracker.finished(res)
            else:
                todo.append(Task(c, out, params, h, digests, run_case, run_id=run_id))
        write_summary(out, cases, results, summary_name)

        def record(res: CaseResult) -> None:
            results[res.case_id] = res
            write_summary(out, cases, results, summary_name)
            tracker.finished(res)

        try:
            if todo and executor == "dask":
                from .dask_executor import run_dask
                run_dask(todo, jobs=jobs, threads=threads, tracker=tracker, record=record,
                         case_timeout=case_timeout, address=dask_address, note=note)
            elif todo:
                from .local import on_worker_event, run_pool
                n_jobs, n_threads = plan_tasks(jobs, todo, threads, note)
                if jobs <= 1 and case_timeout is None:
                    previous = set_threads(n_threads)
                    try:
                        for t in todo:
                            record(run_one(t, lambda kind, *p, _id=t.case.case_id:
                                           on_worker_event(tracker, kind, _id, *p)))
                    finally:
                        if previous is not None:
                            set_threads(previous)
                else:
                    run_pool(todo, out, n_jobs, n_threads, tracker, record, case_timeout)
        finally:
            path = write_summary(out, cases, results, summary_name)
            for c in cases:
                remove_tree(staging_dir(out, c.case_id))
            try:
                (out / STAGING).rmdir()   # only when empty: another shard may still be running
            except OSError:
                pass
            if report:   # also after Ctrl-C: the page then lists the unfinished cases as pending
                try:
                    write_batch_report(out, read_summary(path), report_name)
                except Exception as exc:  # the review page must never fail a batch
                    if note is not None:
                        note(f"{report_name} could not be written: {type(exc).__name__}: {exc}")
    return [results.get(c.case_id) or CaseResult(c.case_id, "pending") for c in cases]

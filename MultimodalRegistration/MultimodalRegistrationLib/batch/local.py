"""The local executor: cases in spawned worker processes on this machine (ProcessPoolExecutor)."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Optional

from .layout import STAGING
from .markers import remove_tree
from .progress import Tracker
from .summary import CaseResult
from .worker import Task, one_line, worker_init, worker_task


def on_worker_event(tracker: Tracker, kind: str, cid: str, *payload) -> None:
    if kind == "start":
        tracker.event(case=cid, case_stage="start")
    elif kind == "stage":
        stage, done, total = payload
        tracker.event(case=cid, case_stage=stage, case_done=done, case_total=total)


def kill_workers(ex, wait_s: float = 0.0) -> None:
    """Terminates the pool's worker processes; with ``wait_s``, waits that long (in all) for them to exit
    and kills (SIGKILL) any still alive, so that the pool's shutdown does not wait on a worker."""
    procs = list(getattr(ex, "_processes", {}).values())
    for proc in procs:
        try:
            proc.terminate()
        except Exception:
            pass
    if wait_s <= 0:
        return
    deadline = time.monotonic() + wait_s
    for proc in procs:
        try:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        except Exception:
            pass


def run_pool(todo: list[Task], out: Path, jobs: int, threads: int, tracker: Tracker, record,
              case_timeout: Optional[float] = None) -> None:
    """Runs tasks in spawned worker processes; a dead worker fails only the cases it had started.

    With ``case_timeout``, a case running longer is stopped by killing the pool's workers: that case
    fails ("timed out"), the other cases running at that moment are put back in the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    stop = threading.Event()
    started: dict[str, float] = {}   # case id -> monotonic start time (from the workers' "start" events)

    def listen():
        import queue as _q
        while not stop.is_set():
            try:
                msg = queue.get(timeout=0.2)
            except _q.Empty:
                continue
            except (EOFError, OSError):
                break
            if msg and msg[0] == "start":
                started[msg[1]] = time.monotonic()
            on_worker_event(tracker, *msg)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    pending = list(todo)
    # A dying worker breaks the whole pool, so every case running at that moment fails with it. Such
    # cases are retried once, each alone in a one-worker pool: only a case that kills its worker
    # again is recorded as failed.
    isolated: list[Task] = []
    retried: set[str] = set()
    try:
        while pending or isolated:
            if isolated:
                batch_tasks, n_workers = [isolated.pop(0)], 1
            else:
                batch_tasks, n_workers, pending = pending, jobs, []
            broken = []
            timed_out: set[str] = set()
            ex = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=worker_init,
                                        initargs=(threads, queue))
            try:
                for t in batch_tasks:
                    started.pop(t.case.case_id, None)   # a re-queued case's clock restarts with it
                futs = {ex.submit(worker_task, t): t for t in batch_tasks}
                waiting = set(futs)
                while waiting:
                    done, waiting = cf.wait(waiting, timeout=None if case_timeout is None else 0.25,
                                            return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        t = futs[fut]
                        try:
                            res = fut.result()
                        except cf.process.BrokenProcessPool:
                            broken.append(t)
                            continue
                        except Exception as exc:  # e.g. an unpicklable result: still only this case fails
                            res = CaseResult(t.case.case_id, "failed",
                                             error=one_line(f"internal error: {type(exc).__name__}: {exc}"))
                        record(res)
                    if case_timeout is not None and not timed_out:
                        now = time.monotonic()
                        late = {futs[f].case.case_id for f in waiting
                                if now - started.get(futs[f].case.case_id, now) > case_timeout}
                        if late:
                            timed_out |= late
                            kill_workers(ex)   # the pool breaks: every unfinished future ends below
            except BaseException:
                # Ctrl-C (or another abort): stop the workers now rather than after their current
                # case; their staging folders are removed below and no marker was written.
                kill_workers(ex, wait_s=5.0)
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            ex.shutdown(wait=True)
            not_started = []
            for t in broken:
                cid = t.case.case_id
                if timed_out:
                    remove_tree(out / STAGING / cid)
                    if cid in timed_out:
                        record(CaseResult(cid, "failed", error=f"timed out: still running after "
                                                               f"{case_timeout:g} s (--case-timeout)"))
                    else:
                        pending.append(t)   # stopped only because another case timed out
                    continue
                # Started (its staging folder exists) -> it was running when a worker died.
                if (out / STAGING / cid).exists():
                    remove_tree(out / STAGING / cid)
                    if cid in retried or n_workers == 1:
                        record(CaseResult(cid, "failed", error="the worker process running this case died "
                                                                 "(out of memory or a crash)"))
                    else:
                        retried.add(cid)
                        isolated.append(t)
                else:
                    not_started.append(t)
            if broken and len(not_started) == len(broken) == len(batch_tasks):
                # Nothing had started: the pool itself cannot start; do not loop forever.
                for t in not_started:
                    record(CaseResult(t.case.case_id, "failed", error="worker processes could not start"))
            else:
                pending.extend(not_started)
    finally:
        stop.set()
        listener.join(timeout=2)
        queue.close()


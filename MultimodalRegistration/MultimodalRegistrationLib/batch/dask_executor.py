"""The Dask executor: cases as tasks on a Dask distributed cluster (``--executor dask``).

With ``--dask-address tcp://HOST:PORT`` the batch connects to a running scheduler whose workers see
OUT and the inputs at the same paths (a shared file system) and have this package installed; with
no address it starts a ``LocalCluster`` of ``--jobs`` worker processes (capped by cores and memory
like the local executor), one thread each.

What stays exactly as with the local executor (the same code does it): the hash and the marker,
skipping finished cases, summary.csv after every case, report.html, the one-line errors. What Dask
adds and how it is kept safe:

* **A worker that dies** (out of memory, segfault, lost machine): the scheduler gives its case to
  another worker. Each try of a case works in its own staging folder
  ``OUT/.mmreg_staging/<id>/<attempt>/`` and only a complete folder, marker written last, is renamed
  to ``OUT/<id>/``, so two tries (a lost worker may still be running) never mix files. A try that
  finds the case already finished *by this batch run* (same ``run_id`` in the marker) returns that
  result instead of redoing it. When the scheduler gives up on a case (``KilledWorker``) the batch
  submits it once more; a case whose worker dies again is recorded failed ("the worker process
  running this case died"). On the LocalCluster the scheduler gives up at the first death
  (``allowed-failures`` = 0), so a case is tried twice in all, as with the local executor. A
  remote scheduler applies its own settings (Dask's default: 3 retries, then the batch's one more).
  The batch hands the cluster only as many cases as it has worker threads (its own queue holds
  the rest), so a worker holds only the case it runs and a death never counts against a case that
  was merely queued there.
* **Timeouts**: the case's clock starts when a worker begins it (a "start" event); past the
  limit its future is cancelled and its worker process is ended (``client.run`` of ``os._exit``;
  the only way to stop a case stuck in C code; a nanny starts a fresh worker), and the case is
  recorded "timed out". Put one thread per worker (``--nthreads 1``) on a remote cluster: this
  also stops the other cases running on that worker, which are then run again.
* **Progress**: workers publish the pipeline stages with ``Worker.log_event`` on a topic of this
  batch; the batch process subscribes and feeds the same Tracker (same JSON lines).
"""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError
from .markers import finished_marker
from .progress import Tracker
from ..threads import limit_process_threads
from .resources import plan_tasks
from .summary import CaseResult
from .worker import Task, one_line, run_one

CONNECT_TIMEOUT_S = 20
DIED = "the worker process running this case died (out of memory or a crash)"


def dask_case(task: Task, topic: str) -> CaseResult:
    """Runs on a Dask worker: one case, in a staging folder of its own try."""
    try:
        from distributed import get_worker
        worker = get_worker()
        address, nthreads = worker.address, max(1, int(worker.state.nthreads))
    except Exception:   # not on a worker (called directly): still works, without progress
        worker, address, nthreads = None, "", 1
    threads = task.threads or max(1, (os.cpu_count() or 1) // nthreads)
    limit_process_threads(threads)
    cid = task.case.case_id
    m = finished_marker(Path(task.out) / cid, task.hash)
    if m is not None and task.run_id and m.get("run_id") == task.run_id:
        # An earlier try of this case in this same batch finished before its worker was lost.
        return CaseResult(cid, "done", success=m.get("success"), metric=m.get("metric"), seconds=m.get("seconds"),
                          warnings=m.get("warnings", ""), out_dir=str(Path(task.out) / cid),
                          confidence=m.get("confidence"))
    task = dataclasses.replace(task, attempt=uuid.uuid4().hex[:12], threads=threads)

    def emit(kind, *payload):
        if worker is not None:
            try:
                worker.log_event(topic, [kind, cid, address, *payload])
            except Exception:
                pass

    return run_one(task, emit)


async def _exit_worker_process() -> None:
    """Runs on a worker (client.run, in its event loop): ends its process at once, stopping the case
    stuck in it. A coroutine, because Dask runs only coroutines fire-and-forget (wait=False)."""
    os._exit(70)


def _is_killed_worker(exc: BaseException) -> bool:
    return type(exc).__name__ == "KilledWorker"


def run_dask(todo: list[Task], *, jobs: int, threads: Optional[int], tracker: Tracker,
             record: Callable[[CaseResult], None], case_timeout: Optional[float] = None,
             address: Optional[str] = None, note: Optional[Callable[[str], None]] = None) -> None:
    try:
        import dask
        from distributed import Client, LocalCluster, wait
    except ImportError as exc:
        raise InputError(f"--executor dask needs the Dask distributed package ({exc}); "
                         f"install it with: pip install 'MultimodalRegistration[cluster]'") from None
    cluster = None
    if address:
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {address} ({one_line(exc)})") from None
        for t in todo:
            t.threads = threads
    else:
        n_jobs, _ = plan_tasks(jobs, todo, threads, note)
        # allowed-failures 0: a worker death fails its task at once and the batch resubmits the case
        # itself (once, below).
        with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                              "distributed.logging.distributed": "error"}):
            cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=50)   # CRITICAL only: the summary reports failures
            client = Client(cluster)
    topic = f"mmreg-batch-{uuid.uuid4().hex}"
    started: dict[str, tuple[float, str]] = {}   # case id -> (monotonic start, worker address)

    def on_event(event) -> None:
        try:
            _, msg = event
            kind, cid, addr, *payload = msg
        except (TypeError, ValueError):
            return
        if kind == "start":
            started[cid] = (time.monotonic(), addr)
            tracker.event(case=cid, case_stage="start")
        elif kind == "stage" and len(payload) == 3:
            stage, done, total = payload
            tracker.event(case=cid, case_stage=stage, case_done=done, case_total=total)

    client.subscribe_topic(topic, on_event)
    futs = {}
    retried: set[str] = set()

    def submit(t: Task):
        f = client.submit(dask_case, t, topic, key=f"mmreg-{t.case.case_id}-{uuid.uuid4().hex[:8]}", pure=False,
                          retries=0)
        futs[f] = t
        return f

    # The batch keeps its own queue and hands the cluster only as many cases as it has worker
    # threads: a worker then holds just the case it runs, so a worker that dies (or is restarted
    # for a timeout) never takes down cases that were merely queued on it.
    queue = deque(todo)
    waiting: set = set()
    no_workers_since, told = time.monotonic(), False
    try:
        while queue or waiting:
            try:
                n_threads_now = sum(client.nthreads().values())
            except Exception:
                n_threads_now = 0
            capacity = max(1, n_threads_now)
            if n_threads_now:
                no_workers_since = time.monotonic()
            elif not told and time.monotonic() - no_workers_since > 30 and note is not None:
                note("the Dask cluster has no workers; waiting for some to join")
                told = True
            while queue and len(waiting) < capacity:
                waiting.add(submit(queue.popleft()))
            try:
                res = wait(list(waiting), timeout=0.25 if case_timeout else 2.0, return_when="FIRST_COMPLETED")
                done = set(res.done)
            except TimeoutError:
                done = set()
            except Exception:  # dask raises its own TimeoutError type on some versions
                done = {f for f in waiting if f.done()}
            for f in done:
                waiting.discard(f)
                t = futs[f]
                cid = t.case.case_id
                try:
                    r = f.result()
                except Exception as exc:
                    if _is_killed_worker(exc) and cid not in retried:
                        # its worker died: try once more (on the cluster's other or restarted workers)
                        retried.add(cid)
                        started.pop(cid, None)
                        queue.appendleft(t)
                        continue
                    r = CaseResult(cid, "failed", error=DIED if _is_killed_worker(exc) else
                                   one_line(f"internal error: {type(exc).__name__}: {exc}"))
                record(r)
            if case_timeout:
                now = time.monotonic()
                for f in list(waiting):
                    cid = futs[f].case.case_id
                    st = started.get(cid)
                    if st is None or now - st[0] <= case_timeout:
                        continue
                    waiting.discard(f)
                    f.cancel()
                    try:   # end that worker process now; its nanny starts a fresh one (do not wait for it)
                        client.run(_exit_worker_process, workers=[st[1]], wait=False)
                    except Exception as exc:
                        if note is not None:
                            note(f"could not stop the Dask worker {st[1]} running the timed-out case {cid} "
                                 f"({one_line(exc)}); it may go on running until it finishes")
                    record(CaseResult(cid, "failed", error=f"timed out: still running after {case_timeout:g} s "
                                                           f"(--case-timeout)"))
    except BaseException:
        for f in futs:
            f.cancel()
        raise
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:
            pass
        client.close()
        if cluster is not None:
            cluster.close()

"""One case, on whichever process runs it: staging folder, pipeline, marker, atomic rename."""
from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .. import __version__
from ..errors import MMRegError
from ..volume import atomic_write
from .layout import LOGS, MARKER, STAGING
from .manifest import Case
from .markers import file_sha256, finished_marker, params_dict, remove_tree
from ..threads import limit_process_threads
from .summary import CaseResult


@dataclass
class Task:
    case: Case
    out: Path
    params: object
    hash: str
    digests: dict
    run_case: Optional[Callable] = None
    threads: Optional[int] = None
    #: "" for the local executors (staging folder OUT/.mmreg_staging/<id>/); a unique token for an
    #: executor that may run the same case twice at once (Dask after a lost worker): then each try
    #: gets its own OUT/.mmreg_staging/<id>/<attempt>/ and the two can never mix their files.
    attempt: str = ""
    #: identifies one `mmreg batch` run; written into the marker (see dask_executor.dask_case)
    run_id: str = ""


def staging_dir(out: Path, cid: str, attempt: str = "") -> Path:
    root = Path(out) / STAGING / cid
    return root / attempt if attempt else root


_WORKER_QUEUE = None


def worker_init(threads: int, queue) -> None:
    """Runs once in each local worker process: limit threads, remember the progress queue."""
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    if queue is not None and hasattr(queue, "cancel_join_thread"):
        # A worker that dies (killed, out of memory) while its queue feeder holds the queue's shared
        # write lock leaves it locked: the other workers' feeders then block forever, and a worker
        # that waits for its feeder at exit never exits, so the pool's shutdown hangs (seen in
        # test_jobs_2_matches_jobs_1_and_survives_a_dying_worker). Progress events are best-effort:
        # a worker never waits for them at exit.
        queue.cancel_join_thread()
    limit_process_threads(threads)


def worker_task(task: Task) -> CaseResult:
    q = _WORKER_QUEUE

    def emit(kind, *payload):
        if q is not None:
            try:
                q.put((kind, task.case.case_id, *payload))
            except Exception:
                pass

    return run_one(task, emit)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_one(task: Task, emit: Callable = lambda *a: None) -> CaseResult:
    """Runs one case into its staging folder and moves it into place (called in a worker or in-process).

    Python exceptions become a failed :class:`CaseResult`; KeyboardInterrupt propagates.
    """
    case, out = task.case, Path(task.out)
    cid = case.case_id
    final = out / cid
    staging = staging_dir(out, cid, task.attempt)
    # The staging folder is created first: a worker that dies leaves it behind, which is how the
    # parent knows this case had started (see local.run_pool).
    remove_tree(staging)
    staging.mkdir(parents=True)
    emit("start")
    t0 = time.perf_counter()
    # A stale or half-finished folder of this case must not survive next to the new run.
    if final.exists() or final.is_symlink():
        stale = staging / "stale"
        remove_tree(stale)
        os.replace(final, stale)
        remove_tree(stale)
    work = staging / "out"
    run_case = task.run_case
    if run_case is None:
        from ..pipeline import run_case
    inp = case.inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = run_case(
                str(inp["coronal"]), str(inp["axial"]), str(work),
                coronal_labels=str(inp["coronal_labels"]) if "coronal_labels" in inp else None,
                axial_labels=str(inp["axial_labels"]) if "axial_labels" in inp else None,
                params=task.params, progress=lambda stage, done, total: emit("stage", stage, int(done), int(total)))
            if not isinstance(transform, dict):
                raise TypeError(f"run_case returned {type(transform).__name__}, not a dict")
        except Exception as exc:
            seconds = time.perf_counter() - t0
            msg = str(exc) if isinstance(exc, MMRegError) else f"internal error: {type(exc).__name__}: {exc}"
            _write_log(out, cid, traceback.format_exc())
            remove_tree(staging)
            return CaseResult(cid, "failed", error=one_line(msg), seconds=round(seconds, 3),
                              warnings=_warn_text(caught))
    seconds = time.perf_counter() - t0
    emit("stage", "finish", 0, 1)
    outputs = {}
    if work.exists():
        for p in sorted(work.rglob("*")):
            if p.is_file() and ".part" not in p.name:
                outputs[str(p.relative_to(work))] = p.stat().st_size
    if not outputs:
        remove_tree(staging)
        return CaseResult(cid, "failed", error="internal error: the pipeline wrote no outputs",
                          seconds=round(seconds, 3))
    success = transform.get("success")
    success = success if isinstance(success, bool) or success is None else bool(success)
    metric = transform.get("metric")
    confidence = transform.get("confidence")
    if (work / "report.html").is_file():  # the page names the case and its folder once in place
        try:
            from ..report_html import write_case_page
            write_case_page(work, cid, shown_dir=final)
        except Exception:
            pass
    marker = {
        "hash": task.hash, "version": __version__, "params": params_dict(task.params),
        "inputs": {r: {"path": str(p), "sha256": task.digests.get(r)} for r, p in inp.items()},
        "outputs": outputs, "output_sha256": {n: file_sha256(work / n) for n in outputs},
        "success": success, "metric": metric, "confidence": confidence, "seconds": round(seconds, 3),
        "threads": task.threads, "run_id": task.run_id,
        "warnings": _warn_text(caught),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # The marker is written last (atomically), then the whole folder is renamed into place.
    atomic_write(work / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(marker, indent=2, default=str)),
                 suffix=".json")
    if final.exists():  # a second try of this case finished first (Dask): replace it, never merge
        remove_tree(final)
    try:
        os.replace(work, final)
    except OSError:
        if finished_marker(final, task.hash) is None:   # not another complete copy of this case
            raise
    remove_tree(staging)
    (out / LOGS / f"{cid}.log").unlink(missing_ok=True)
    emit("stage", "finish", 1, 1)
    return CaseResult(cid, "done", success=success, metric=None if metric is None else float(metric),
                      seconds=round(seconds, 3), warnings=_warn_text(caught), out_dir=str(final),
                      confidence=_float_or_none(confidence))


def _float_or_none(v) -> Optional[float]:
    try:
        return None if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def _warn_text(caught) -> str:
    seen = []
    for w in caught or []:
        s = one_line(str(w.message))
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)


def _write_log(out: Path, cid: str, text: str) -> None:
    try:
        atomic_write(out / LOGS / f"{cid}.log", lambda tmp: Path(tmp).write_text(text), suffix=".log")
    except OSError:
        pass


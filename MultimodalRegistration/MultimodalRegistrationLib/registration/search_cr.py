"""``--method search-cr``, the default: the search engine on the correlation ratio (FFT search on
gradient magnitudes, Levenberg-Marquardt on the ratio), on the original ceT1 against the T2 (no
translator needed), run forward (coronal -> axial) and backward (axial -> coronal). The result counts
as successful only when both agree (:data:`~.params.SEARCH_CR_CONSISTENCY_MM`); when they disagree,
each direction restarts from the other's result (the rescue), then both searches again around the
forward estimate (a second pass, whose result each direction takes only where its own metric prefers
it); consistent estimates are averaged (their rigid midpoint). A second metric (NMI, :mod:`.vote`) then
votes: the agreement stands only if no estimate of the run farther than the threshold scores higher;
an unsuccessful result is the estimate NMI prefers. Last, the result is polished on NMI at 1 mm
(:mod:`.nmi_polish`): the correlation ratio of each direction is biased where the contrast relation is not
a function."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .. import geometry
from ..metrics import SignalPoints
from ..threads import cpu_share, torch_threads
from ..volume import Volume
from .nmi_polish import NmiPolisher, import_optimizer, polisher_parts
from .params import SearchCrParams, SearchNccParams
from .pyramid import shrink_inplane
from .result import RegistrationResult
from .search_ncc import register_search_ncc
from .vote import NmiScore


def preload() -> None:
    """What search-cr imports only while it runs (for ``registration.preload``): the polish's optimiser."""
    import_optimizer()


def _overlap(moving: Volume, fixed: Volume, moving_to_fixed: np.ndarray, signal: SignalPoints | None = None):
    """At most 4000 of the moving stack's signal points that ``moving_to_fixed`` puts inside the fixed
    stack (``signal``: the moving stack's :class:`~..metrics.SignalPoints`, else computed here)."""
    return (signal or SignalPoints(moving)).inside(fixed, moving_to_fixed, max_points=4000)


def midpoint_transform(moving: Volume, fixed: Volume, first: np.ndarray, second: np.ndarray,
                       signal: SignalPoints | None = None) -> np.ndarray:
    """The rigid transform closest (least squares over the overlap) to the point-wise mean of the two
    moving->fixed transforms ``first`` and ``second`` (Kabsch)."""
    pts = _overlap(moving, fixed, first, signal)
    if len(pts) < 4:
        return np.asarray(first, dtype=np.float64)
    mean_pts = 0.5 * (geometry.apply(first, pts) + geometry.apply(second, pts))
    pc, qc = pts.mean(0), mean_pts.mean(0)
    left, _, right_t = np.linalg.svd((pts - pc).T @ (mean_pts - qc))
    d = np.sign(np.linalg.det(right_t.T @ left.T))
    rotation = right_t.T @ np.diag([1.0, 1.0, d]) @ left.T
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = qc - rotation @ pc
    return out


def pose_distance_mm(points: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """Mean distance (mm) between where two moving->fixed transforms put the moving-world ``points``
    (inf without points)."""
    if not len(points):
        return float("inf")
    return float(np.linalg.norm(geometry.apply(first, points) - geometry.apply(second, points), axis=1).mean())


def consistency_mm(moving: Volume, fixed: Volume, forward: np.ndarray, backward: np.ndarray,
                   signal: SignalPoints | None = None) -> float:
    """Mean distance (mm, fixed world) between where ``forward`` (moving->fixed) and ``inv(backward)``
    (backward: fixed->moving) put the moving stack's signal voxels that fall inside the fixed stack."""
    return pose_distance_mm(_overlap(moving, fixed, forward, signal), forward,
                            np.linalg.inv(backward))


def nmi_vote(moving: Volume, fixed: Volume, result: np.ndarray, success: bool, fwd, bwd, history, tol: float,
             signal: SignalPoints | None = None, scorer=None):
    """The second metric's vote (:mod:`.vote`). Candidates: every estimate the run produced (each pass's
    searched forward and backward results, before any restart, and the final forward and backward
    estimates). ``success`` stands only if no candidate farther than ``tol`` from ``result`` has a higher
    NMI than ``result``: an agreement that a restart or a shared start produced is then confirmed by a
    metric that neither direction optimised. When the result is not confirmed, the candidate with the
    highest NMI is returned instead (still unsuccessful). Returns (result, success, vote details)."""
    named = [("the forward estimate", np.asarray(fwd.moving_to_fixed, dtype=np.float64)),
             ("the backward estimate", np.linalg.inv(np.asarray(bwd.moving_to_fixed, dtype=np.float64)))]
    for h in history:
        named.append((f"the pass-{h['pass']} forward search", np.asarray(h["searched_forward_ras"])))
        named.append((f"the pass-{h['pass']} backward search", np.asarray(h["searched_backward_inverse_ras"])))
    points = _overlap(moving, fixed, result, signal)
    rows = [{"estimate": name, "mm_from_result": pose_distance_mm(points, result, m)} for name, m in named]
    vote = {"similarity": "normalised mutual information, 32 bins, 2 mm in-plane", "candidates": rows,
            "chosen": "result"}
    if success and all(r["mm_from_result"] <= tol for r in rows):
        # every estimate of the run lies within the tolerance of the result: nothing to vote on
        vote.update(confirmed=True, result_nmi=None)
        return result, success, vote
    nmi_of = scorer() if scorer is not None else NmiScore(moving, fixed)
    scored = {}

    def score(m):   # the same matrix often appears twice (a pass's search result is the final estimate)
        key = np.asarray(m, dtype=np.float64).tobytes()
        if key not in scored:
            scored[key] = nmi_of(m)
        return scored[key]

    own = score(result)
    for r, (_, m) in zip(rows, named):
        r["nmi"] = score(m)
    rivals = [r for r in rows if r["mm_from_result"] > tol and r["nmi"] > own]
    vote.update(confirmed=(not rivals) if success else None, result_nmi=own)
    if success and rivals:
        success = False
        vote["note"] = ("the two directions agree, but an estimate farther than "
                        f"{tol:g} mm from their result scores a higher NMI: not confirmed")
    if not success:
        best = max(range(len(rows)), key=lambda i: rows[i]["nmi"])
        if rows[best]["nmi"] > own and rows[best]["mm_from_result"] > 0.0:
            result = named[best][1]
            vote["chosen"] = rows[best]["estimate"]
    return result, success, vote


def _polisher(moving, fixed, params: SearchCrParams, device, seed, parts=None) -> NmiPolisher:
    return NmiPolisher(moving, fixed, level_mm=params.polish_level_mm, bins=params.polish_bins,
                       max_points=params.polish_points, profile=params.polish_profile_samples, seed=seed,
                       device=device, parts=parts)


def _polish(moving, fixed, result, success, params: SearchCrParams, device, seed, tol, polisher=None, signal=None):
    """The NMI polish (:mod:`.nmi_polish`) of ``result`` (with ``polisher``, else one built here); returns
    (result, success, details). A polish that moves a successful result farther than ``tol`` has left the
    pose the two directions agreed on: the result is then no longer confirmed (success false, with a note)."""
    polisher = polisher or _polisher(moving, fixed, params, device, seed)
    polished, info = polisher.polish(result, params.polish_iterations, params.polish_max_evaluations,
                                     params.polish_memory_order)
    info["moved_mm"] = pose_distance_mm(_overlap(moving, fixed, result, signal), result, polished)
    if success and info["moved_mm"] > tol:
        success = False
        info["note"] = (f"the NMI polish moved the agreed result by {info['moved_mm']:.1f} mm (more than "
                        f"{tol:g} mm): not confirmed")
    return polished, success, info


def _polish_directions(moving, fixed, result, fwd, bwd, params: SearchCrParams, device, seed, tol, polisher=None,
                       signal=None):
    """The forward and backward estimates disagree (farther apart than ``tol``): the result, the forward
    estimate and the backward one are each polished on NMI (one polisher: the same sample points, so their
    NMI values compare). When the polished forward and backward estimates lie within ``tol`` of each other
    and of the best of the three, two independent starts have reached one NMI optimum: ``success`` is
    true, with a note. The output is the polished pose with the highest NMI (``polisher``: the one to use,
    else one built here). Returns (result, success, details)."""
    starts = [("the result", np.asarray(result, dtype=np.float64)),
              ("the forward estimate", np.asarray(fwd.moving_to_fixed, dtype=np.float64)),
              ("the backward estimate", np.linalg.inv(np.asarray(bwd.moving_to_fixed, dtype=np.float64)))]
    polisher = polisher or _polisher(moving, fixed, params, device, seed)
    done = {}
    polished = []
    for name, start in starts:
        key = start.tobytes()       # the result is often the forward estimate itself
        if key not in done:
            done[key] = polisher.polish(start, params.polish_iterations, params.polish_max_evaluations,
                                        params.polish_memory_order)
        polished.append((name, start) + done[key])
    best = max(range(3), key=lambda i: polished[i][3]["nmi_after"])
    name, start, out, info = polished[best]
    info = dict(info, chosen=name, starts=[{"start": n, "nmi_after": d["nmi_after"]} for n, _, _, d in polished])
    pts = _overlap(moving, fixed, out, signal)
    info["moved_mm"] = pose_distance_mm(pts, np.asarray(result, dtype=np.float64), out)
    apart = pose_distance_mm(pts, polished[1][2], polished[2][2])
    info["directions_after_polish_mm"] = apart
    agree = apart <= tol and all(pose_distance_mm(pts, out, polished[i][2]) <= tol for i in (1, 2))
    success = bool(agree)
    if agree:
        info["agreement_note"] = (f"the forward and backward estimates disagreed, but polished on NMI they agree to "
                                  f"{apart:.1f} mm (threshold {tol:g} mm)")
    return out, success, info


def _pair(pool, forward_job, backward_job, side=None):
    """Runs the two independent directions at once on ``pool`` (None: one after the other); returns
    (forward result, backward result). Each direction is deterministic on its own (one torch thread,
    its own seed), so running them together changes the time, not the results. ``side``: the
    :class:`_SideJobs` that each direction takes jobs from once its result is ready; the pair does not
    wait for them (their work is waited for where it is needed: :meth:`_SideJobs.wait`)."""
    side = side or _SideJobs()
    if pool is None:
        fwd = forward_job()
        side()
        bwd = backward_job()
        side()
        return fwd, bwd
    ready = Future()
    forward_done = threading.Event()

    def backward_then():
        try:
            ready.set_result(backward_job())
        except BaseException as exc:  # noqa: BLE001  (re-raised on the forward thread by ready.result())
            ready.set_exception(exc)
            return
        side(other_busy=lambda: not forward_done.is_set())

    pool.submit(backward_then)
    try:
        fwd = forward_job()
    finally:
        forward_done.set()
    side(other_busy=lambda: not ready.done())
    return fwd, ready.result()


class _SideJobs:
    """Work that neither direction's result needs (the NMI polisher's two halves; optionally the vote's
    scorer), taken one job at a time by whichever direction thread has finished its registration while
    the other one still runs (each call runs jobs until none is left), so that it fills the wait instead
    of lengthening the slower direction. An ``optional`` job runs only while the other direction is still
    busy (its work is otherwise done where it is needed, if it is). Whoever needs the work calls
    :meth:`wait` (it runs the required jobs nobody took)."""

    def __init__(self, jobs=(), optional=()):
        self._jobs = list(jobs)
        self._optional = list(optional)
        self._lock = threading.Lock()
        self._pending = len(self._jobs)           # required jobs not done, and optional ones started
        self._done = threading.Event()
        self._error = None
        if not self._pending:
            self._done.set()

    def __call__(self, other_busy=None):
        """Runs jobs until none is left (optional ones only while ``other_busy()`` is true)."""
        while True:
            with self._lock:
                if self._jobs:
                    job = self._jobs.pop(0)
                elif self._optional and other_busy is not None and other_busy():
                    job = self._optional.pop(0)
                    self._pending += 1
                    self._done.clear()
                else:
                    return
            try:
                job()
            except BaseException as exc:  # noqa: BLE001  (re-raised by wait() on the thread that needs it)
                self._error = self._error or exc
            finally:
                with self._lock:
                    self._pending -= 1
                    if not self._pending:
                        self._done.set()

    def wait(self):
        """Waits until every required job and every optional job already started has run (running the
        required ones nobody took; the optional ones not started are dropped); re-raises the first error."""
        with self._lock:
            self._optional = []
        self()
        self._done.wait()
        if self._error is not None:
            raise self._error


class _Once:
    """``make()``, computed on the first call (from whichever thread) and kept."""

    def __init__(self, make):
        self._make = make
        self._lock = threading.Lock()
        self._value = None

    def __call__(self):
        with self._lock:
            if self._make is not None:
                self._value, self._make = self._make(), None
            return self._value


def _forward_backward(moving, fixed, fixed_1mm, forward_job, p_fwd: SearchNccParams, p_bwd: SearchNccParams, tol,
                      rescue, device, seed, pool, side=None, caches=(None, None), signal=None):
    """The forward (``forward_job()``, or a finished result) and backward registrations and their
    disagreement (mm), with the rescue: when they disagree, each direction is refined again from the
    other's result and keeps whichever of its two results its own metric prefers (one of them may sit in
    a local optimum that the other's result escapes). ``fixed_1mm``: a callable that returns the backward
    direction's moving image (the axial stack at about 1 mm in-plane; made on the backward thread);
    ``side``: the :class:`_SideJobs` that each direction takes jobs from when its registration is done
    (None: nothing); ``caches``: the forward and backward directions' preparation caches
    (:func:`~.search_ncc.register_search_ncc`); ``signal``: a callable that returns the moving stack's
    :class:`~..metrics.SignalPoints`. Returns (fwd, bwd, mm, which directions took the other's start, the
    two results before the rescue)."""
    signal = signal or (lambda: None)

    def backward():
        return register_search_ncc(fixed_1mm(), moving, params=p_bwd, progress=None, device=device, seed=seed + 1,
                                   cache=caches[1])

    fwd, bwd = _pair(pool, forward_job, backward, side)
    raw = (fwd, bwd)
    mm = consistency_mm(moving, fixed, fwd.moving_to_fixed, bwd.moving_to_fixed, signal())
    swapped = []
    if not (np.isfinite(mm) and mm <= tol) and rescue:
        from_bwd = p_fwd.replace(init="header", initial_transform=np.linalg.inv(bwd.moving_to_fixed))
        from_fwd = p_bwd.replace(init="header", initial_transform=np.linalg.inv(fwd.moving_to_fixed))
        f2, b2 = _pair(pool,
                       lambda: register_search_ncc(moving, fixed, params=from_bwd, progress=None, device=device,
                                                   seed=seed, cache=caches[0]),
                       lambda: register_search_ncc(fixed_1mm(), moving, params=from_fwd, progress=None,
                                                   device=device, seed=seed + 1, cache=caches[1]))
        if np.isfinite(f2.metric) and f2.metric > fwd.metric:
            fwd = f2
            swapped.append("forward")
        if np.isfinite(b2.metric) and b2.metric > bwd.metric:
            bwd = b2
            swapped.append("backward")
        mm = consistency_mm(moving, fixed, fwd.moving_to_fixed, bwd.moving_to_fixed, signal())
    return fwd, bwd, mm, swapped, raw


def register_search_cr(moving: Volume, fixed: Volume, *, params: SearchCrParams | None = None, progress=None,
                       device: str = "cpu", seed: int = 0) -> RegistrationResult:
    """The default method (see the module docstring); ``params``: :class:`~.params.SearchCrParams`."""
    params = params or SearchCrParams()
    # the backward direction on a second thread while the forward one runs on this one
    pool = ThreadPoolExecutor(max_workers=1) if params.consistency and params.concurrent and cpu_share(2) > 1 \
        else None
    # set once for both directions (torch's setting is process-wide)
    with torch_threads(int(params.torch_threads or torch.get_num_threads())):
        try:
            return _register_search_cr(moving, fixed, params, progress, device, seed, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)


def _register_search_cr(moving, fixed, params: SearchCrParams, progress, device, seed, pool) -> RegistrationResult:
    tol = float(params.consistency_mm)
    t0 = time.perf_counter()
    p_fwd = params.engine()
    # per direction, the preparation its restarts share (scaled images, sample points, search features)
    caches = ({}, {})

    def forward(p=p_fwd, prog=progress):
        return register_search_ncc(moving, fixed, params=p, progress=prog, device=device, seed=seed, cache=caches[0])

    success = None
    vote_seconds = None
    # the NMI polisher's two halves (its points, its moving volume) and the vote's NMI scorer do not depend
    # on the pose: the direction threads of the first pass take them, one job at a time, once their own
    # registration is done (the scorer only while the other direction still runs)
    prepared: dict = {}
    jobs = []
    if params.nmi_polish:
        halves = polisher_parts(moving, fixed, level_mm=params.polish_level_mm, max_points=params.polish_points,
                                profile=params.polish_profile_samples, seed=seed)
        jobs += [lambda: prepared.__setitem__("fixed half", halves[0]()),      # the longer half first
                 lambda: prepared.__setitem__("moving half", halves[1]())]
    # the vote needs its scorer only when an estimate lies farther than the threshold from the result
    optional = [lambda: prepared.__setitem__("nmi", NmiScore(moving, fixed))] if params.vote else []
    side = _SideJobs(jobs, optional)

    def polisher() -> NmiPolisher:
        side.wait()
        if "polisher" not in prepared:
            prepared["polisher"] = _polisher(moving, fixed, params, device, seed,
                                             parts=(prepared["fixed half"], prepared["moving half"]))
        return prepared["polisher"]

    def scorer() -> NmiScore:
        side.wait()
        if "nmi" not in prepared:
            prepared["nmi"] = NmiScore(moving, fixed)
        return prepared["nmi"]

    if params.consistency:
        # the axial stack as the backward moving image, block-averaged in-plane to about 1 mm (its
        # finest level samples it at 4 mm: the native 0.5 mm grid only costs time)
        fixed_1mm = _Once(lambda: shrink_inplane(fixed, 1.0))     # made by the backward direction's thread
        signal = _Once(lambda: SignalPoints(moving))   # the overlap's points, for every distance between poses
        # the check always runs its own global search
        p_bwd = p_fwd.replace(init="search" if p_fwd.init == "header" else p_fwd.init,
                              initial_transform=None if p_fwd.initial_transform is None
                              else np.linalg.inv(np.asarray(p_fwd.initial_transform, dtype=np.float64)))
        history = []
        for k in range(max(1, int(params.passes))):
            if k > 0:
                # still no agreement: both searches again, centred on the current forward estimate
                # (a rotation beyond the search lattice is reached in two steps)
                p_fwd = p_fwd.replace(init="search", initial_transform=fwd.moving_to_fixed)
                p_bwd = p_bwd.replace(init="search", initial_transform=np.linalg.inv(fwd.moving_to_fixed))
                job = (lambda p=p_fwd: forward(p, None))
            else:
                job = forward
            f_new, b_new, d_new, swapped, raw = _forward_backward(moving, fixed, fixed_1mm, job, p_fwd, p_bwd, tol,
                                                             params.rescue, device, seed, pool,
                                                             side if k == 0 else None, caches, signal)
            kept = []
            if k > 0:
                # the second pass's two searches share a start (the forward estimate), so their agreement
                # alone is not an independent check: each direction takes its new result only where its
                # own metric prefers it to its earlier one
                if not (np.isfinite(f_new.metric) and f_new.metric >= fwd.metric):
                    f_new = fwd
                    kept.append("forward")
                if not (np.isfinite(b_new.metric) and b_new.metric >= bwd.metric):
                    b_new = bwd
                    kept.append("backward")
                if kept:
                    d_new = consistency_mm(moving, fixed, f_new.moving_to_fixed, b_new.moving_to_fixed, signal())
            history.append({"pass": k + 1, "mm": d_new, "restarted_from_the_other": swapped,
                            "kept_the_earlier_result": kept,
                            "searched_forward_ras": np.asarray(raw[0].moving_to_fixed).tolist(),
                            "searched_backward_inverse_ras": np.linalg.inv(raw[1].moving_to_fixed).tolist()})
            if k == 0:
                first_fwd = f_new
            if k == 0 or d_new < mm:
                fwd, bwd, mm = f_new, b_new, d_new
            if np.isfinite(mm) and mm <= tol:
                break
        details = dict(first_fwd.details)
        result = fwd.moving_to_fixed
        details["consistency"] = {"mm": mm, "threshold_mm": tol, "backward_metric": float(bwd.metric),
                                  "restarted_from_the_other": history[0]["restarted_from_the_other"],
                                  "passes": history,
                                  "backward_fixed_to_moving_ras": np.asarray(bwd.moving_to_fixed).tolist(),
                                  "forward_moving_to_fixed_ras": np.asarray(fwd.moving_to_fixed).tolist(),
                                  "directions_run_concurrently": pool is not None}
        success = bool(np.isfinite(mm) and mm <= tol)
        if success and params.symmetric:
            # two independent estimates that agree: their rigid mean halves the error variance
            result = midpoint_transform(moving, fixed, fwd.moving_to_fixed, np.linalg.inv(bwd.moving_to_fixed),
                                        signal())
            details["result"] = "rigid mean of the forward and backward estimates"
        else:
            details["result"] = "forward estimate"
        if params.vote:
            t_vote = time.perf_counter()
            result, success, details["vote"] = nmi_vote(moving, fixed, result, success, fwd, bwd, history, tol,
                                                        signal(), scorer)
            vote_seconds = time.perf_counter() - t_vote
            if details["vote"]["chosen"] != "result":
                details["result"] = details["vote"]["chosen"] + " (preferred by the second metric)"
        if params.nmi_polish and success is False and params.polish_agreement and \
                not (details.get("vote") or {}).get("note"):
            # the directions disagree: polish each of them too; if both reach one pose, that is the check
            result, success, details["nmi_polish"] = _polish_directions(moving, fixed, result, fwd, bwd, params,
                                                                        device, seed, tol, polisher(), signal())
            details["result"] = f"{details['nmi_polish']['chosen']}, polished on NMI (the best of three polished starts)"
        elif params.nmi_polish:
            result, success, details["nmi_polish"] = _polish(moving, fixed, result, success, params, device, seed,
                                                             tol, polisher(), signal())
            if details["nmi_polish"]["applied"]:
                details["result"] += ", polished on NMI"
    else:
        fwd = forward()
        result = fwd.moving_to_fixed
        details = dict(fwd.details)
        details["consistency"] = None
        details["success_note"] = "no consistency check was run (consistency=False): success is unknown"
        if params.nmi_polish:
            result, _, details["nmi_polish"] = _polish(moving, fixed, result, None, params, device, seed, tol)
    details["similarity"] = "correlation ratio (fixed given moving), search on gradient magnitude"
    details["seconds"] = dict(details.get("seconds", {}), total=round(time.perf_counter() - t0, 4))
    if vote_seconds is not None:
        details["seconds"]["vote"] = round(vote_seconds, 4)
    if "nmi_polish" in details:
        details["seconds"]["nmi_polish"] = details["nmi_polish"]["seconds"]["total"]
    details["level_ncc"] = fwd.details.get("level_ncc")
    return RegistrationResult(moving_to_fixed=result, method="search-cr", metric=float(fwd.metric),
                              success=success, details=details)

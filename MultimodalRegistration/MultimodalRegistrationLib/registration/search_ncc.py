"""The search engine, and ``--method search-ncc`` (was ``ours``): global FFT search (masked NCC, or the
correlation ratio, over every translation for a lattice of rotations around the start) on a coarse
isotropic grid, then continuous 6-DOF refinement in physical space on a pyramid (Levenberg-Marquardt on
NCC or the correlation ratio, or L-BFGS on NCC). ``search-cr`` (:mod:`.search_cr`) runs the same engine
with its own parameters, forward and backward."""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import geometry
from ..device import resolve_device
from ..progress import report
from ..threads import torch_threads
from ..volume import Volume
from .images import center_init, robust_scale, signal_mask
from .params import SearchNccParams
from .pyramid import shrink_inplane
from .refine import Level, refine_lbfgs, refine_lm, refine_lm_cr
from .result import RegistrationResult
from .search import distinct, fft_search


def register_search_ncc(moving: Volume, fixed: Volume, *, params: SearchNccParams | None = None, progress=None,
                        device: str = "cpu", seed: int = 0, cache: dict | None = None) -> RegistrationResult:
    """The search engine with ``params`` (:class:`~.params.SearchNccParams`; defaults: search-ncc).
    ``cache``: a dict kept by the caller across several registrations of the same ``moving`` and ``fixed``
    images (search-cr's restarts of one direction): the pose-independent preparation (scaled images,
    masks, the refinement levels' sample points, the search's smoothed feature images) is computed once
    and reused; the results are the same as without it. None: nothing is kept."""
    params = params or SearchNccParams()
    with torch_threads(int(params.torch_threads or torch.get_num_threads())):
        return _register(moving, fixed, params, progress, device, seed, cache)


def _cached(cache: dict | None, key, make):
    """``make()``, kept in ``cache`` under ``key`` (computed each time without a cache)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _cr_knots(mov: np.ndarray, n_bins: int) -> np.ndarray:
    """Knots of the correlation ratio's intensity map: 0 and the moving foreground's quantiles."""
    sub = mov.ravel()[:: max(1, mov.size // 200000)]          # a regular subsample is plenty for quantiles
    fg = sub[sub > 0.02]
    qs = np.quantile(fg, np.linspace(0.0, 1.0, n_bins)) if fg.size else np.linspace(0.02, 1.0, n_bins)
    return np.unique(np.concatenate([[0.0], qs]))


def _prepare_images(moving: Volume, fixed: Volume, p: SearchNccParams):
    """The scaled moving array, the fixed stack block-averaged to the finest level, its scaled array and
    mask (pose-independent)."""
    mov = np.asarray(moving.array, dtype=np.float32)
    mov = mov / robust_scale(mov)
    # everything on the fixed side works from the axial stack block-averaged in-plane to the finest
    # level (e.g. 0.5 mm -> 2 mm): 16x fewer voxels for masks, smoothing and the search
    fixed = shrink_inplane(fixed, min(float(v) for v in p.levels_mm))
    fix = np.asarray(fixed.array, dtype=np.float32)
    fix = fix / robust_scale(fix)
    fix_mask = signal_mask(fix, float(p.fixed_mask_frac), dilate=1) if float(p.fixed_mask_frac) > 0 else \
        np.ones(fix.shape, dtype=bool)
    return mov, fixed, fix, fix_mask


def _register(moving: Volume, fixed: Volume, p: SearchNccParams, progress, device, seed,
              cache=None) -> RegistrationResult:
    dev = torch.device(resolve_device(device))
    t0 = time.perf_counter()
    # what the prepared images depend on besides the two volumes (every cache key includes it)
    prep = (tuple(float(v) for v in p.levels_mm), float(p.fixed_mask_frac))
    mov, fixed, fix, fix_mask = _cached(cache, ("images",) + prep, lambda: _prepare_images(moving, fixed, p))
    start = np.asarray(p.initial_transform if p.initial_transform is not None else np.eye(4), dtype=np.float64)
    init = p.init
    use_cr = p.similarity == "cr"
    if use_cr:
        knots_np = _cached(cache, ("knots", int(p.cr_bins)) + prep, lambda: _cr_knots(mov, int(p.cr_bins)))
        cr_knots = torch.from_numpy(knots_np.astype(np.float64))

    def centroids():
        return _cached(cache, ("centroids",) + prep,
                       lambda: center_init(moving.with_array(mov), fixed.with_array(fix)))

    if init == "center":
        start = centroids() @ start
    levels = list(p.levels_mm)
    iters = list(p.iterations)
    max_points = list(p.max_points)
    n_steps = len(levels) + 4
    details: dict = {"init": init}
    timings: dict = {"prepare": time.perf_counter() - t0}
    cands = [(float("nan"), start)]
    if init in ("search", "center"):
        t1 = time.perf_counter()
        edges = knots_np[1:-1] if use_cr else None     # bins of the ratio's FFT search
        offsets = []
        if init == "search" and p.also_search_from_center:
            # a second search around the signal centroids (the headers' rotation kept), pooled with
            # the first: it finds cases whose header positions are off by more than the search range,
            # or where a wrong peak near the header start outscores the true one further away. Its
            # start is the first one translated: the two share the FFTs where one grid holds both
            offsets.append(centroids()[:3, 3])
        cands = fft_search(mov, moving, fix, fixed, fix_mask, start, p, progress, edges, offsets,
                           prepared=None if cache is None else cache.setdefault(("search",) + prep + (str(dev),), {}))
        details["search_best_ncc"] = cands[0][0]
        timings["search"] = time.perf_counter() - t1
        cands = distinct(cands, int(p.top_k))
    t1 = time.perf_counter()

    def c_world_of(transform):
        return geometry.apply(transform, moving.center_world()[None])[0]

    stop = {"min_gain": float(p.lm_min_gain), "tries": int(p.lm_tries)}

    def refine(from_transform, lvl, n_iter):
        if use_cr:
            return refine_lm_cr(from_transform, lvl, c_world_of(from_transform), n_iter, cr_knots, **stop)
        if p.optimizer == "lm":
            return refine_lm(from_transform, lvl, c_world_of(from_transform), n_iter, **stop)
        return refine_lbfgs(from_transform, lvl, c_world_of(from_transform), n_iter)

    def level(li):
        return _cached(cache, ("level", float(levels[li]), int(p.profile_samples), int(max_points[li]), seed + li,
                               str(dev)) + prep,
                       lambda: Level(moving, mov, fixed, fix, fix_mask, levels[li], int(p.profile_samples),
                                     max_points[li], seed + li, dev))

    lvl0 = level(0)
    screen = int(p.screen_iterations) if len(cands) > 1 else 0
    best = None
    for _, cand in cands:       # every candidate gets a short refinement (all of it when there is one)
        found, value, frac = refine(cand, lvl0, screen or iters[0])
        if best is None or value > best[1]:
            best = (found, value, frac)
    current, value, frac = best
    if screen and iters[0] > screen:     # the best screened candidate finishes the level
        found, value2, frac2 = refine(current, lvl0, iters[0] - screen)
        if np.isfinite(value2) and value2 >= value:
            current, value, frac = found, value2, frac2
    timings[f"level_{levels[0]:g}mm"] = time.perf_counter() - t1
    report(progress, "register", n_steps - len(levels) + 1, n_steps)
    per_level = [value]
    for li in range(1, len(levels)):
        t1 = time.perf_counter()
        lvl = level(li)
        found, value2, frac2 = refine(current, lvl, iters[li])
        if np.isfinite(value2):
            current, value, frac = found, value2, frac2
        per_level.append(value)
        timings[f"level_{levels[li]:g}mm"] = time.perf_counter() - t1
        report(progress, "register", n_steps - len(levels) + 1 + li, n_steps)
    report(progress, "register", n_steps, n_steps)
    details.update({"level_ncc": [float(v) for v in per_level], "overlap_fraction": float(frac),
                    "levels_mm": [float(v) for v in levels], "success_threshold_ncc": float(p.success_ncc),
                    "device": str(dev), "seconds": {k: round(v, 4) for k, v in timings.items()}})
    ok = bool(np.isfinite(value) and value >= float(p.success_ncc))
    return RegistrationResult(moving_to_fixed=current, method="search-ncc", metric=float(value), success=ok,
                              details=details)

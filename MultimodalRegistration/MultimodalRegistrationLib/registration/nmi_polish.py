"""search-cr's last step: a local polish of its result on normalised mutual information.

The correlation ratio fits one image's intensities as a function of the other's, so each direction of
search-cr carries a bias where the ceT1/T2 relation is not a function (contrast-enhancing tissue,
vessels, fat): the forward and backward estimates typically lie 0.5-1 mm and ~1 degree from the truth,
in directions that repeat per patient. NMI scores the joint histogram of both images symmetrically and
has no such fitted map. This module maximises Studholme's NMI ``(H(F) + H(M)) / H(F, M)`` over the 6
rigid parameters, from the result, on a finer level than the refinement (the axial stack block-averaged
to 1 mm in-plane; the slice profile is optional, off by default), by L-BFGS with an autograd gradient.

The histogram is differentiable in the pose: each fixed point's bin is fixed (its own intensity), and
its moving sample is spread over four neighbouring moving bins by a cubic B-spline (a Parzen window),
so the joint histogram, and NMI, move smoothly with the samples.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import geometry
from ..volume import Volume
from .images import robust_scale
from .refine import Level, fixed_points, moving_volume, refine_lbfgs, sample_moved

_EPS = 1e-10


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + _EPS)).sum()


def nmi_loss(bins: int, counter: list | None = None):
    """A ``refine_lbfgs`` loss: -100 NMI (scaled so that L-BFGS's tolerances act on ~1e-4 changes of
    NMI) of the level's fixed values (hard bins) against the moved samples, each spread over four
    moving bins by a cubic B-spline (Parzen window), so the histogram and its gradient are smooth in the
    pose. ``counter``: a one-element list that counts the evaluations."""
    fixed_rows: dict = {}
    cols = bins + 3                                  # the spline's support reaches one bin below, two above

    def loss(x, lvl: Level, start_inv_t, c_t):
        if counter is not None:
            counter[0] += 1
        mv, w, frac, rows = sample_moved(x, lvl, start_inv_t, c_t)
        if mv is None:
            return torch.zeros((), dtype=x.dtype) + 0 * x.sum(), frac
        key = id(lvl)
        if key not in fixed_rows:
            fixed_rows[key] = torch.clamp((lvl.vals * (bins - 1)).long(), 0, bins - 1) * cols
        t = torch.clamp(mv.double() * (bins - 1), 0.0, bins - 1 - 1e-6)
        base = torch.floor(t.detach()).long()
        f = t - base
        f2, f3 = f * f, f * f * f
        spline = ((1 - f) ** 3 / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6)
        wd = w.double()
        idx = fixed_rows[key][rows] + base         # column base - 1 + k, shifted by one: base + k
        joint = torch.zeros(bins * cols, dtype=torch.float64, device=mv.device)
        for k, weight in enumerate(spline):
            joint = joint.index_add(0, idx + k, wd * weight)
        p = joint / joint.sum()
        square = p.view(bins, cols)
        nmi = (_entropy(square.sum(1)) + _entropy(square.sum(0))) / _entropy(p)
        return -100.0 * nmi, frac

    return loss


def import_optimizer() -> None:
    """Imports the polish's optimiser module (scipy.optimize: 0.15-0.2 s), which refine_lbfgs imports
    only when it first runs."""
    import scipy.optimize  # noqa: F401


def polisher_parts(moving: Volume, fixed: Volume, *, level_mm: float = 1.0, max_points: int = 60000,
                   profile: int = 1, seed: int = 0):
    """The two independent halves of an :class:`NmiPolisher`'s preparation, as callables that may run
    on different threads: (fixed half, moving half); pass their results as ``parts``. The moving half also
    imports the optimiser's module (scipy.optimize), which refine_lbfgs would import at its first run."""

    def fixed_half():
        fix = np.asarray(fixed.array, dtype=np.float32)
        fix = fix / robust_scale(fix)
        return fixed_points(fixed, fix, np.ones(fix.shape, dtype=bool), float(level_mm), int(profile),
                            int(max_points), int(seed))

    def moving_half():
        import_optimizer()
        mov = np.asarray(moving.array, dtype=np.float32)
        mov = mov / robust_scale(mov)
        return moving_volume(moving, mov, float(level_mm))

    return _timed(fixed_half), _timed(moving_half)


def _timed(job):
    def run():
        t0 = time.perf_counter()
        out = job()
        return out, time.perf_counter() - t0
    return run


class NmiPolisher:
    """The polish's sample points and moving volume (one :class:`~.refine.Level`), built once and used
    for any number of starts: polishes from several starts then score NMI on the same points, so their
    values compare. ``parts``: the results of the two :func:`polisher_parts` callables for the same
    arguments, when they ran elsewhere (None: both run here)."""

    def __init__(self, moving: Volume, fixed: Volume, *, level_mm: float = 1.0, bins: int = 32,
                 max_points: int = 60000, profile: int = 1, seed: int = 0, device: str = "cpu", parts=None):
        if parts is None:
            parts = [job() for job in polisher_parts(moving, fixed, level_mm=level_mm, max_points=max_points,
                                                     profile=profile, seed=seed)]
        (fixed_part, t_fixed), (moving_part, t_moving) = parts
        t0 = time.perf_counter()
        self.moving = moving
        self.bins = int(bins)
        self.level_mm = float(level_mm)
        self.dev = torch.device(device)
        self.lvl = Level.from_parts(fixed_part, moving_part, self.dev)
        # the preparation's own time (its two halves may have run on two threads)
        self.prepare_seconds = t_fixed + t_moving + time.perf_counter() - t0

    def polish(self, start: np.ndarray, iterations: int = 8, max_evaluations: int = 0,
               memory_order: bool = False) -> tuple[np.ndarray, dict]:
        """Maximises NMI from the moving->fixed ``start``; returns (moving->fixed, details: NMI before and
        after, L-BFGS's evaluations, seconds). Keeps ``start`` when the polish does not raise NMI.
        ``max_evaluations``: :func:`~.refine.refine_lbfgs`'s; ``memory_order``: sample the points in the
        order of :meth:`~.refine.Level.in_memory_order` under ``start``."""
        t0 = time.perf_counter()
        evaluations = [0]
        loss = nmi_loss(self.bins, evaluations)
        start = np.asarray(start, dtype=np.float64)
        c_world = geometry.apply(start, self.moving.center_world()[None])[0]
        # the same points, sampled in the moving volume's memory order from the start (faster)
        lvl = self.lvl.in_memory_order(start) if memory_order else self.lvl
        lbfgs: dict = {}
        found, value, _ = refine_lbfgs(start, lvl, c_world, int(iterations), loss_fn=loss, ftol=1e-7,
                                       gtol=1e-6, info=lbfgs, max_evaluations=int(max_evaluations))
        before = lbfgs["start_value"] / 100.0          # NMI at the start (L-BFGS's first point)
        after = value / 100.0
        kept = bool(np.isfinite(after) and after > before)
        details = {"similarity": f"normalised mutual information, {self.bins} bins, {self.level_mm:g} mm in-plane",
                   "nmi_before": before, "nmi_after": after if kept else before, "applied": kept,
                   "evaluations": evaluations[0],
                   "seconds": {"prepare": round(self.prepare_seconds, 4),
                               "total": round(self.prepare_seconds + time.perf_counter() - t0, 4)}}
        return (found if kept else start), details


def polish_nmi(moving: Volume, fixed: Volume, start: np.ndarray, *, level_mm: float = 1.0, bins: int = 32,
               max_points: int = 60000, iterations: int = 8, profile: int = 1, seed: int = 0,
               device: str = "cpu") -> tuple[np.ndarray, dict]:
    """One polish from ``start`` (:class:`NmiPolisher`); returns (moving->fixed, details)."""
    return NmiPolisher(moving, fixed, level_mm=level_mm, bins=bins, max_points=max_points, profile=profile,
                       seed=seed, device=device).polish(start, iterations)

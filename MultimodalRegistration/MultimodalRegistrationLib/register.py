"""Rigid registration of a (translated) coronal stack to an axial stack.

Three methods behind one entry point, :func:`register`, all returning a :class:`RegistrationResult`
whose ``moving_to_fixed`` maps a point of the coronal (moving) RAS world to the axial (fixed) RAS
world:

* ``"ours"`` (default): global search (FFT masked-NCC over every translation for a lattice of
  rotations around the start) on a coarse isotropic grid, then continuous 6-DOF refinement in
  physical space on a pyramid: the coronal stack is sampled (trilinear, torch ``grid_sample``) at
  the axial voxel centres with the axial slice profile (several samples across each axial slice's
  thickness), normalised cross-correlation over the overlap, L-BFGS with autograd.
* ``"paper"``: the paper's method, faithfully (Sec. 3.5): slice-axis interpolation, subsets of
  re-sliced coronal rows one axial spacing apart, pruning, centre initialisation, greedy nudges of
  +-lr_i pixels / +-1 degree with the decaying step ``lr_i = lr_0 / (1 + i / n)`` (Eq. 1), MSE, best
  subset by the lowest mean MSE. Vectorised over subsets and probes (torch).
* ``"mi"``: the paper's SimpleITK mutual-information baseline (:mod:`baselines`).

Details and every interpretation of the paper: docs/REGISTRATION.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from . import geometry
from .geometry import rotvec_matrix
from .errors import InputError
from .progress import report
from .subsets import axis_correspondence, interpolate_slice_axis, plan_for
from .volume import Volume, slice_axis

METHODS = ("search-cr", "search-ncc", "paper", "mi")
#: Old names still accepted: "ours" was the NCC engine (now "search-ncc"), unchanged.
METHOD_ALIASES = {"ours": "search-ncc"}
DEFAULT_METHOD = "search-cr"


def canonical_method(method: str) -> str:
    """The method's current name ("ours" -> "search-ncc"); raises InputError for an unknown one."""
    m = METHOD_ALIASES.get(method, method)
    if m not in METHODS:
        raise InputError(f"unknown registration method {method!r}; choose from {', '.join(METHODS)}")
    return m

#: Success thresholds (documented and calibrated in docs/REGISTRATION.md).
#: ours: final NCC over the overlap at the finest level; paper: mean MSE of the best subset after
#: the fixed image is scaled so that its 99th percentile is 1000 (the paper's 6e5 was on raw scanner
#: intensities and does not transfer); mi: final Mattes MI (negative, lower is better).
OURS_SUCCESS_NCC = 0.80
PAPER_SUCCESS_MSE = 5.3e4
MI_SUCCESS_METRIC = -0.67

OURS_DEFAULTS = {
    "init": "search",            # "search" (header start + global search) | "header" (trust headers) | "center"
    "search_rot_deg": 15.0,      # rotation lattice radius around the start
    "search_rot_step_deg": 7.5,
    "search_shift_mm": 50.0,     # translation range of the FFT search around the start
    "search_grid_mm": 8.0,
    "search_coarse_grid_mm": 12.0,  # every rotation is scored on this grid first ...
    "search_keep": 3,            # ... and this many of the best again on search_grid_mm
    "top_k": 2,                  # search candidates refined at the coarsest level ...
    "screen_iterations": 3,      # ... each for this many iterations; the best one finishes the level
    "levels_mm": (4.0, 2.0),     # axial in-plane resolution of the refinement levels
    "iterations": (20, 15),
    "max_points": (8000, 16000),
    "profile_samples": 3,
    "optimizer": "lm",           # "lm" (Levenberg-Marquardt, analytic Jacobian) | "lbfgs" (L-BFGS, autograd; ncc only)
    "similarity": "ncc",         # "ncc" (monomodal: synthetic T2 vs T2) | "cr" (correlation ratio: any contrast)
    "search_feature": "intensity",  # FFT search on "intensity" or "gradmag" (gradient magnitude, any contrast)
    "fixed_mask_frac": 0.08,     # fixed voxels above this share of its robust max are compared (0 = all)
    "cr_bins": 10,               # cr: intensity bins (search) / knots of the piecewise-linear map (refinement)
    "success_ncc": OURS_SUCCESS_NCC,
    "also_search_from_center": False,  # init "search": also search around the signal centroids (pooled)
    "torch_threads": 1,          # the problem is small: more intra-op threads only add overhead (and
                                 # stall badly on a busy machine: 59 s instead of 7 s with 2 threads)
}

PAPER_DEFAULTS = {
    "lr0": 2.0,                  # initial step in working pixels
    "n_iter": 12,                # iterations of the greedy search per subset (n of Eq. 1)
    "rot_step_deg": 1.0,
    "pixel_mm": 2.0,             # in-plane working pixel for the MSE (speed; the paper used the native grid)
    "normalisation": "simple",   # "simple" | "histogram"
    "rotations": "inplane",      # "inplane" (about the axial slice normal) | "all" (also about R and A)
    "subset_stride": 1,          # evaluate every n-th kept subset (1 = all, as the paper)
    "success_mse": PAPER_SUCCESS_MSE,
}


@dataclass
class RegistrationResult:
    moving_to_fixed: np.ndarray      # 4x4, coronal (moving) RAS world -> axial (fixed) RAS world
    method: str                      # "ours" | "paper" | "mi" (benchmark wrappers: "elastix", "ants")
    metric: float                    # final metric (paper: mean MSE of the best subset; ours: NCC)
    success: bool | None             # calibrated rule (docs/REGISTRATION.md); None = not known
    subset_index: int | None = None
    subset_metrics: list[float] | None = None   # per-subset metric curve (paper Fig. 7), None if n/a
    seconds: float = 0.0
    details: dict = field(default_factory=dict)  # JSON-serialisable extras

    def to_json(self) -> dict:
        d = asdict(self)
        d["moving_to_fixed"] = np.asarray(self.moving_to_fixed, dtype=float).tolist()
        return d


def register(moving: Volume, fixed: Volume, method: str = DEFAULT_METHOD, *, params: dict | None = None,
             progress=None, device: str = "cpu", seed: int = 0) -> RegistrationResult:
    """Registers ``moving`` (coronal stack, its header world) to ``fixed`` (axial stack)."""
    method = canonical_method(method)
    _check_inputs(moving, fixed)
    params = dict(params or {})
    t0 = time.perf_counter()
    if method == "search-cr":
        res = register_search_cr(moving, fixed, params=params, progress=progress, device=device, seed=seed)
    elif method == "search-ncc":
        res = register_ours(moving, fixed, params=params, progress=progress, device=device, seed=seed)
    elif method == "paper":
        res = register_paper(moving, fixed, params=params, progress=progress, device=device)
    else:
        from .baselines import register_mi
        res = register_mi(moving, fixed, params=params, progress=progress, seed=seed)
    res.seconds = time.perf_counter() - t0
    return res


def _check_inputs(moving: Volume, fixed: Volume) -> None:
    for v, name in ((moving, "moving (coronal) volume"), (fixed, "fixed (axial) volume")):
        if not isinstance(v, Volume):
            raise InputError(f"{name} must be a Volume")
        a = np.asarray(v.array)
        if a.ndim != 3 or min(a.shape) < 2:
            raise InputError(f"{name} must be a 3D stack with at least 2 voxels per axis, got {a.shape}")
        if not np.isfinite(a).all():
            raise InputError(f"{name} has NaN/Inf voxels")
        if float(a.max()) == float(a.min()):
            raise InputError(f"{name} is constant; nothing to register")


# ============================================================================ shared helpers

def robust_scale(arr: np.ndarray, q: float = 99.0) -> float:
    a = np.asarray(arr, dtype=np.float32)
    pos = a[a > 0]
    s = float(np.percentile(pos, q)) if pos.size else float(np.abs(a).max())
    return s if s > 0 else 1.0


def _inplane_axes(vol: Volume) -> list[int]:
    k = slice_axis(vol)
    return [a for a in range(3) if a != k]


def block_mean(vol: Volume, factors) -> Volume:
    """Averages blocks of ``factors`` voxels (crop to multiples); the affine follows the block centres."""
    f = [max(1, int(x)) for x in factors]
    arr = np.asarray(vol.array, dtype=np.float32)
    if f == [1, 1, 1]:
        return Volume(arr, vol.affine.copy())
    n = [max(1, s // fi) for s, fi in zip(arr.shape, f)]
    f = [min(fi, s) for fi, s in zip(f, arr.shape)]
    a = arr[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    a = a.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))
    aff = vol.affine.copy()
    aff[:3, :3] = vol.affine[:3, :3] * np.asarray(f, dtype=np.float64)
    aff[:3, 3] = vol.affine[:3, :3] @ ((np.asarray(f, dtype=np.float64) - 1) / 2) + vol.affine[:3, 3]
    return Volume(a, aff)


def level_factors(vol: Volume, level_mm: float) -> list[int]:
    """In-plane block factors bringing ``vol`` to about ``level_mm``; the slice axis is never shrunk."""
    k = slice_axis(vol)
    return [1 if a == k else max(1, int(round(level_mm / vol.spacing[a]))) for a in range(3)]


def smooth_for(vol: Volume, target_mm: float) -> np.ndarray:
    """Gaussian anti-aliasing of ``vol`` before sampling it at ``target_mm`` (per axis, in mm)."""
    sp = vol.spacing
    sig = [math.sqrt(max(0.0, (0.42 * target_mm) ** 2 - (0.42 * s) ** 2)) / s for s in sp]
    arr = np.asarray(vol.array, dtype=np.float32)
    if max(sig) < 0.3:
        return arr
    return ndimage.gaussian_filter(arr, sig, mode="nearest").astype(np.float32)


def gradient_magnitude(arr: np.ndarray, spacing) -> np.ndarray:
    """|grad arr| in intensity per mm (central differences along each voxel axis)."""
    g = [np.gradient(arr, axis=a) / float(spacing[a]) for a in range(3)]
    return np.sqrt(sum(x * x for x in g)).astype(np.float32)


def signal_mask(arr: np.ndarray, frac: float = 0.08, dilate: int = 2) -> np.ndarray:
    thr = frac * robust_scale(arr)
    m = arr > thr
    if dilate > 0:
        m = ndimage.binary_dilation(m, iterations=dilate)
    return m


def about(R: np.ndarray, c: np.ndarray, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 map p -> R (p - c) + c + t."""
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = np.asarray(c) - R @ np.asarray(c) + np.asarray(t, dtype=np.float64)
    return M


def center_init(moving: Volume, fixed: Volume) -> np.ndarray:
    """Translation placing the moving signal centroid on the fixed signal centroid (headers' rotations kept)."""
    def centroid(v):
        a = np.asarray(v.array, dtype=np.float32)
        m = a > 0.1 * robust_scale(a)
        ijk = np.argwhere(m).mean(axis=0) if m.any() else (np.asarray(a.shape) - 1) / 2
        return v.voxel_to_world(ijk[None])[0]
    M = np.eye(4)
    M[:3, 3] = centroid(fixed) - centroid(moving)
    return M


# ============================================================================ ours

def _torch():
    import torch
    return torch


def resolve_device(device) -> "object":
    """torch.device for ``device`` ("cpu", "cuda", "cuda:1", "auto"/None); CUDA falls back to CPU when absent."""
    torch = _torch()
    d = str(device or "auto").lower()
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        d = "cpu"
    try:
        return torch.device(d)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or auto") from None


def _rotation_lattice(radius_deg: float, step_deg: float) -> list[np.ndarray]:
    if radius_deg <= 0 or step_deg <= 0:
        return [np.zeros(3)]
    n = int(math.floor(radius_deg / step_deg + 1e-9))
    out = []
    for a in range(-n, n + 1):
        for b in range(-n, n + 1):
            for c in range(-n, n + 1):
                v = np.array([a, b, c], dtype=np.float64) * step_deg
                if np.linalg.norm(v) <= radius_deg + 1e-6:
                    out.append(np.radians(v))
    out.sort(key=lambda v: float(np.linalg.norm(v)))
    return out


def _sample_vox(vol, vox, size):
    """Trilinear samples (border padding) of ``vol`` (1, C, I, J, K) at moving-voxel positions ``vox``
    (..., 3); ``size`` = the volume's (I, J, K) as a tensor. Returns (C, ...)."""
    import torch.nn.functional as F
    grid = (2.0 * vox / (size - 1.0) - 1.0)[..., [2, 1, 0]].reshape(1, -1, 1, 1, 3)   # grid_sample's x = last axis
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(vol.shape[1], *vox.shape[:-1])


def _overlap_weights(vox, size):
    """Soft inside-the-stack weights of the slice-profile samples ``vox`` (P, S, 3): (w (P,), the share of
    each point's samples inside; wi (P, S), the weights that average a point's inside samples)."""
    import torch
    inside = torch.clamp(torch.minimum(vox + 0.5, size - 0.5 - vox), 0.0, 1.0).prod(dim=-1)
    return inside.mean(dim=1), inside / torch.clamp(inside.sum(dim=1, keepdim=True), min=1e-6)


class _SearchGrid:
    """The fixed side of the masked-NCC FFT search (Padfield 2012) on an isotropic grid of ``g`` mm
    aligned with the fixed stack and padded by the shift range ``T`` (FFT-friendly sizes, float32)."""

    def __init__(self, fix_s: np.ndarray, fixed: Volume, fix_mask: np.ndarray, g: float, T: float, torch):
        from scipy import fft as sfft

        D = fixed.direction
        corners = np.array([[i, j, k] for i in (0, fixed.shape[0] - 1) for j in (0, fixed.shape[1] - 1)
                            for k in (0, fixed.shape[2] - 1)], dtype=np.float64)
        u = fixed.voxel_to_world(corners) @ D                # coordinates along the fixed axes
        lo = u.min(0) - T - g
        hi = u.max(0) + T + g
        self.shape = tuple(int(sfft.next_fast_len(int(np.ceil((h - l) / g)) + 1, real=True)) for l, h in zip(lo, hi))
        self.g, self.T, self.D = g, T, D
        G = np.eye(4)
        G[:3, :3] = D * g
        G[:3, 3] = D @ lo
        self.G = G
        F = geometry.resample(Volume(fix_s, fixed.affine), self.shape, G, order=1)
        mF = geometry.resample(Volume(fix_mask.astype(np.float32), fixed.affine), self.shape, G, order=1) > 0.5
        F = np.where(mF, F, 0).astype(np.float32)
        mFf = mF.astype(np.float32)
        self.FA, self.FF2, self.FM = self.rf(F), self.rf(F * F), self.rf(mFf)
        shifts = [np.fft.fftfreq(n, 1.0 / n) for n in self.shape]   # signed integer shifts per index
        self.sx, self.sy, self.sz = np.meshgrid(*shifts, indexing="ij", sparse=True)
        self.in_range = (np.abs(self.sx) * g <= T) & (np.abs(self.sy) * g <= T) & (np.abs(self.sz) * g <= T)
        self.torch = torch
        self.idx = torch.from_numpy(np.indices(self.shape, dtype=np.float32).reshape(3, -1).T.copy())

    def rf(self, a):
        from scipy import fft as sfft
        return sfft.rfftn(a, workers=1)

    def irf(self, a):
        from scipy import fft as sfft
        return sfft.irfftn(a, s=self.shape, workers=1)

    def sample_moving(self, mov_t, moving: Volume, Mc: np.ndarray):
        """The moving volume (torch, (1, 1, I, J, K)) and its inside mask on this grid, through ``Mc``."""
        torch = self.torch
        A = np.linalg.inv(moving.affine) @ np.linalg.inv(Mc) @ self.G        # grid index -> moving voxel
        vox = self.idx @ torch.from_numpy(A[:3, :3].T.astype(np.float32)) + torch.from_numpy(A[:3, 3].astype(np.float32))
        size = torch.tensor(moving.shape, dtype=torch.float32)
        inside = ((vox >= -0.5) & (vox <= size - 0.5)).all(dim=1)
        v = _sample_vox(mov_t, vox, size)[0]
        v = torch.where(inside, v, torch.zeros((), dtype=v.dtype))
        return v.reshape(self.shape).numpy(), inside.reshape(self.shape).numpy()

    def _best(self, score: np.ndarray, N: np.ndarray, Mc: np.ndarray) -> tuple[float, np.ndarray]:
        # a candidate must overlap at least half as much as the best-overlapping shift (a thin coronal
        # slab may overlap only a small part of the head; tiny overlaps give meaningless scores)
        min_n = max(0.5 * float(N[self.in_range].max()), 50.0 * (6.0 / self.g) ** 3)
        score[(N < min_n) | ~self.in_range] = -np.inf
        idx = np.unravel_index(int(np.argmax(score)), score.shape)
        t = np.array([self.sx.ravel()[idx[0]], self.sy.ravel()[idx[1]], self.sz.ravel()[idx[2]]]) * self.g
        M = np.eye(4)
        M[:3, 3] = self.D @ t
        return float(score[idx]), M @ Mc

    def score_cr(self, mov_t, moving: Volume, Mc: np.ndarray, edges: np.ndarray) -> tuple[float, np.ndarray]:
        """Best correlation ratio (Roche et al. 1998) of the fixed intensities given the moving intensity
        bin, over all shifts within ``T``, for the rotation ``Mc``: (cr, moving_to_fixed).

        The moving samples are split into bins by ``edges``; with one indicator image per bin, every
        sum the ratio needs (per-bin counts and fixed sums over the overlap) is a correlation: one FFT
        product each. CR = (sum_k b_k^2 / n_k - S^2 / N) / (S2 - S^2 / N) over the overlap."""
        Gm, mM = self.sample_moving(mov_t, moving, Mc)
        bins = np.digitize(Gm, edges)
        S = S2 = N = None
        expl = None
        for k in range(len(edges) + 1):
            Bk = np.conj(self.rf(((bins == k) & mM).astype(np.float32)))
            nk = self.irf(self.FM * Bk)
            bk = self.irf(self.FA * Bk)
            e = bk * bk / (np.maximum(nk, 0.0) + 2.0)
            expl = e if expl is None else expl + e
            N = nk if N is None else N + nk
            S = bk if S is None else S + bk
        GM = np.conj(self.rf(mM.astype(np.float32)))
        S2 = self.irf(self.FF2 * GM)
        Ns = np.maximum(N, 1.0)
        tot = S2 - S * S / Ns
        cr = (expl - S * S / Ns) / np.maximum(tot, 1e-6)
        return self._best(cr, N, Mc)

    def score(self, mov_t, moving: Volume, Mc: np.ndarray) -> tuple[float, np.ndarray]:
        """Best masked NCC over all shifts within ``T`` for the rotation ``Mc``: (ncc, moving_to_fixed)."""
        Gm, mM = self.sample_moving(mov_t, moving, Mc)
        mMf = mM.astype(np.float32)
        GA, GB, GM = np.conj(self.rf(Gm)), np.conj(self.rf(Gm * Gm)), np.conj(self.rf(mMf))
        N = self.irf(self.FM * GM)
        S1 = self.irf(self.FA * GM)
        S2 = self.irf(self.FM * GA)
        S11 = self.irf(self.FF2 * GM)
        S22 = self.irf(self.FM * GB)
        S12 = self.irf(self.FA * GA)
        Ns = np.maximum(N, 1.0)
        num = S12 - S1 * S2 / Ns
        den = (S11 - S1 * S1 / Ns) * (S22 - S2 * S2 / Ns)
        ncc = num / np.sqrt(np.maximum(den, 1e-6))
        return self._best(ncc, N, Mc)


def _moving_for_search(mov: np.ndarray, moving: Volume, g: float, torch):
    """The moving stack block-averaged in-plane to about g/3 and smoothed for a g-mm grid (torch)."""
    mv = block_mean(Volume(mov, moving.affine), level_factors(moving, g / 3.0))
    arr = smooth_for(mv, g)
    return torch.from_numpy(np.ascontiguousarray(arr))[None, None], mv


def _fft_ncc_search(mov: np.ndarray, moving: Volume, fix: np.ndarray, fixed: Volume, fix_mask: np.ndarray,
                    M0: np.ndarray, p: dict, torch, progress=None,
                    cr_edges: np.ndarray | None = None) -> list[tuple[float, np.ndarray]]:
    """Global search around ``M0``: masked NCC over every translation within ``search_shift_mm`` (FFT)
    (the correlation ratio on moving-intensity bins ``cr_edges`` instead, when given and the search
    feature is the intensity)
    for each rotation of a lattice. Coarse to fine: every rotation is scored on a
    ``search_coarse_grid_mm`` grid, the ``search_keep`` best again on the ``search_grid_mm`` grid.
    Returns (ncc, moving_to_fixed) candidates, best first."""
    g = float(p["search_grid_mm"])
    gc = float(p.get("search_coarse_grid_mm") or g)
    keep = int(p.get("search_keep") or 0)
    T = float(p["search_shift_mm"])
    c_mov = geometry.apply(M0, moving.center_world()[None])[0]
    rots = _rotation_lattice(float(p["search_rot_deg"]), float(p["search_rot_step_deg"]))
    starts = [about(rotvec_matrix(rv), c_mov) @ M0 for rv in rots]
    two_stage = gc > g and 0 < keep < len(starts)
    n_report = len(starts) + (keep if two_stage else 0)

    feature = p.get("search_feature", "intensity")

    def run_stage(grid_mm: float, Ms: list, done: int):
        fs = smooth_for(Volume(fix, fixed.affine), grid_mm)
        mov_t, mv = _moving_for_search(mov, moving, grid_mm, torch)
        if feature == "gradmag":
            fs = gradient_magnitude(fs, fixed.spacing)
            mov_t = torch.from_numpy(gradient_magnitude(mov_t[0, 0].numpy(), mv.spacing))[None, None]
        sg = _SearchGrid(fs, fixed, fix_mask, grid_mm, T, torch)
        out = []
        for i, Mc in enumerate(Ms):
            if cr_edges is not None and feature == "intensity":
                ncc, M = sg.score_cr(mov_t, mv, Mc, cr_edges)
            else:
                ncc, M = sg.score(mov_t, mv, Mc)
            out.append((ncc, M, Mc))
            report(progress, "register", done + i + 1, n_report + 4)
        return out

    if two_stage:
        coarse = run_stage(gc, starts, 0)
        coarse.sort(key=lambda c: -c[0])
        fine = run_stage(g, [c[2] for c in coarse[:keep]], len(starts))
        cands = [(s, M) for s, M, _ in fine]
    else:
        cands = [(s, M) for s, M, _ in run_stage(g, starts, 0)]
    cands.sort(key=lambda c: -c[0])
    return cands


class _Level:
    """Fixed sample points (with slice profile) and the smoothed moving volume at one pyramid level."""

    def __init__(self, moving: Volume, mov_arr: np.ndarray, fixed: Volume, fix_arr: np.ndarray,
                 fix_mask: np.ndarray, level_mm: float, profile: int, max_points: int, seed: int, torch, dev):
        fx = Volume(np.where(fix_mask, fix_arr, 0).astype(np.float32), fixed.affine)
        fac = level_factors(fixed, level_mm)
        fl = block_mean(fx, fac)
        ml = block_mean(Volume(fix_mask.astype(np.float32), fixed.affine), fac)
        keep = ml.array > 0.5
        ijk = np.argwhere(keep)
        vals = fl.array[keep] / np.maximum(ml.array[keep], 1e-6)
        if len(ijk) > max_points:
            rng = np.random.default_rng(seed)
            sel = np.sort(rng.choice(len(ijk), max_points, replace=False))
            ijk, vals = ijk[sel], vals[sel]
        world = fl.voxel_to_world(ijk.astype(np.float64))
        kf = slice_axis(fixed)
        thick = float(fixed.spacing[kf])
        nrm = fixed.direction[:, kf]
        offs = np.linspace(-thick / 2, thick / 2, profile + 2)[1:-1] if profile > 1 else np.zeros(1)
        pts = world[:, None, :] + offs[None, :, None] * nrm[None, None, :]
        # the moving stack, block-averaged in-plane to about a third of the level's spacing, smoothed;
        # value + spatial gradient (voxel units) as 4 channels: one forward grid_sample gives both the
        # samples and their derivatives (see _sample_with_grad)
        mv = block_mean(Volume(mov_arr, moving.affine), level_factors(moving, level_mm / 3.0))
        sm = smooth_for(mv, level_mm)
        vg = np.stack([sm] + [np.gradient(sm, axis=a).astype(np.float32) for a in range(3)])
        self.mov = torch.from_numpy(np.ascontiguousarray(vg))[None].to(dev)
        self.inv_aff_np = np.linalg.inv(mv.affine)
        self.inv_aff = torch.from_numpy(self.inv_aff_np).to(dev)
        self.origin_np = world.mean(0)
        self.shape = torch.tensor(mv.shape, dtype=torch.float32, device=dev)
        self.origin = torch.from_numpy(self.origin_np).to(dev)      # points are stored relative to it (float32)
        self.pts = torch.from_numpy((pts - self.origin_np).astype(np.float32)).to(dev)   # (P, S, 3)
        self.vals = torch.from_numpy(vals.astype(np.float32)).to(dev)
        self.n = len(vals)


_SAMPLER = None


def _sample_with_grad(torch):
    """autograd Function: trilinear samples of channel 0 of a (1, 4, I, J, K) volume at voxel positions
    (P, S, 3); the gradient with respect to the positions comes from channels 1-3 (the volume's
    precomputed spatial gradient, sampled in the same forward pass) instead of grid_sample's slow
    backward, and is smooth across voxel boundaries."""
    global _SAMPLER
    if _SAMPLER is not None:
        return _SAMPLER

    class SampleWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, vox, vol4, size):
            out = _sample_vox(vol4, vox, size)                    # (4, P, S)
            ctx.save_for_backward(out[1:])
            return out[0]

        @staticmethod
        def backward(ctx, g):
            (grad,) = ctx.saved_tensors
            return (g[..., None] * grad.permute(1, 2, 0)), None, None

    _SAMPLER = SampleWithGrad
    return _SAMPLER


def _ours_loss(x, lvl: _Level, M0inv_t, c_t, torch, F):
    """-NCC for params x = (rotation vector in degrees, translation in mm) applied after M0 about c."""
    rv = x[:3] * (math.pi / 180.0)
    th = torch.sqrt((rv * rv).sum() + 1e-18)
    k = rv / th
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    K = torch.stack([torch.stack([zero, -k[2], k[1]]), torch.stack([k[2], zero, -k[0]]),
                     torch.stack([-k[1], k[0], zero])])
    I = torch.eye(3, dtype=x.dtype, device=x.device)
    R = I + torch.sin(th) * K + (1 - torch.cos(th)) * (K @ K)
    # fixed world -> moving world: M0^-1 ( R^T (p - c - t) + c ), p = origin + pts; composed in float64
    # as one affine map of the (float32) relative points
    A = lvl.inv_aff @ M0inv_t
    L = A[:3, :3] @ R.T                                          # p -> A R^T p
    off = L @ (lvl.origin - c_t - x[3:]) + A[:3, :3] @ c_t + A[:3, 3]
    vox = lvl.pts @ L.T.float() + off.float()                    # (P, S, 3) moving voxel indices
    size = lvl.shape
    v = _sample_with_grad(torch).apply(vox, lvl.mov, size)      # (P, S)
    with torch.no_grad():   # overlap weights: constants of each evaluation (no gradient through the FOV edge)
        w, wi = _overlap_weights(vox.detach(), size)
    mv = (v * wi).sum(dim=1)
    sw = w.sum()
    if float(sw.detach()) < 0.05 * lvl.n:
        return torch.ones((), dtype=x.dtype) * 1.0 + 0 * x.sum(), 0.0
    a = lvl.vals
    ma = (w * a).sum() / sw
    mb = (w * mv).sum() / sw
    da, db = a - ma, mv - mb
    cov = (w * da * db).sum() / sw
    va = (w * da * da).sum() / sw
    vb = (w * db * db).sum() / sw
    ncc = cov / torch.sqrt(va * vb + 1e-12)
    return -ncc.double(), float(sw.detach()) / lvl.n


def _refine_lbfgs(M0: np.ndarray, lvl: _Level, c_world: np.ndarray, iters: int, torch, dev) -> tuple[np.ndarray, float, float]:
    """L-BFGS (scipy's L-BFGS-B; torch autograd for the gradient) on the 6 rigid parameters."""
    import torch.nn.functional as F
    from scipy.optimize import minimize

    M0inv_t = torch.from_numpy(np.linalg.inv(M0)).to(dev)
    c_t = torch.from_numpy(np.asarray(c_world, dtype=np.float64)).to(dev)
    cache = {}

    def fun(xn):
        x = torch.tensor(xn, dtype=torch.float64, device=dev, requires_grad=True)
        loss, frac = _ours_loss(x, lvl, M0inv_t, c_t, torch, F)
        loss.backward()
        g = x.grad.detach().cpu().numpy().astype(np.float64)
        cache["frac"] = frac
        if not np.all(np.isfinite(g)):
            g = np.zeros(6)
        return float(loss.detach()), g

    x0 = np.zeros(6)
    x0[:3] = 1e-4
    try:
        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(iters), "maxfun": int(iters) * 2, "ftol": 1e-6, "gtol": 1e-5})
        xv = res.x
    except (RuntimeError, ValueError):
        xv = x0
    with torch.no_grad():
        loss, frac = _ours_loss(torch.from_numpy(xv).to(dev), lvl, M0inv_t, c_t, torch, F)
    if not np.all(np.isfinite(xv)):
        return M0, -float(loss), frac
    M = about(rotvec_matrix(np.radians(xv[:3])), c_world, xv[3:]) @ M0
    return M, -float(loss), frac


def _ncc_and_jacobian(M: np.ndarray, lvl: _Level, c: np.ndarray, torch, jac: bool = True):
    """NCC over the overlap for the moving->fixed map ``M`` and, with ``jac``, the Jacobian of the
    slice-profile-averaged moving samples with respect to the update ``about(R(w), c, t) @ M`` at
    w = t = 0 (w: rotation vector in radians, t: translation in mm).

    Returns (ncc, overlap fraction, mv (P,), w (P,), J (P, 6) or None); ncc is nan when the overlap
    is under 5% of the fixed points."""
    B = lvl.inv_aff_np @ np.linalg.inv(M)                          # fixed world -> moving voxel
    K = B[:3, :3]
    off = K @ lvl.origin_np + B[:3, 3]
    dev = lvl.pts.device
    vox = lvl.pts @ torch.from_numpy(K.T.astype(np.float32)).to(dev) + torch.from_numpy(off.astype(np.float32)).to(dev)
    out = _sample_vox(lvl.mov, vox, lvl.shape)                      # (4, P, S)
    w, wi = _overlap_weights(vox, lvl.shape)
    mv = (out[0] * wi).sum(dim=1)
    sw = float(w.sum())
    frac = sw / lvl.n
    if sw < 0.05 * lvl.n:
        return float("nan"), frac, mv, w, None
    a = lvl.vals
    da = a - (w * a).sum() / sw
    db = mv - (w * mv).sum() / sw
    ncc = float((w * da * db).sum() / torch.sqrt((w * da * da).sum() * (w * db * db).sum() + 1e-12))
    J = None
    if jac:
        # d vox / d w_k = K (r x e_k) with r = p - c, d vox / d t = -K; g = sampled image gradient:
        # g . K (r x e_k) = ((K^T g) x r)_k
        h = torch.einsum("cps,cd->psd", out[1:], torch.from_numpy(K.astype(np.float32)).to(dev))
        r = lvl.pts + torch.from_numpy((lvl.origin_np - c).astype(np.float32)).to(dev)
        Jw = (torch.linalg.cross(h, r, dim=-1) * wi[..., None]).sum(dim=1)
        Jt = -(h * wi[..., None]).sum(dim=1)
        J = torch.cat([Jw, Jt], dim=1)
    return ncc, frac, mv, w, J


def _lm(M0: np.ndarray, c_world: np.ndarray, iters: int, evaluate, system, step, torch):
    """The Levenberg-Marquardt loop both refinements share. ``evaluate(M, c)`` returns the state at the
    moving->fixed map ``M`` (rotations about ``c``): (metric, overlap fraction, ...), metric nan when the
    overlap is too small; ``system(state)`` the normal equations (A, b, k) whose rows k: are the 6 motion
    parameters (they get the damping); ``step(theta)`` the motion update (rotation vector in radians,
    translation in mm) or None. Steps are capped at ~6 degrees / 5 mm and kept only if the metric does not
    drop (else the damping grows tenfold). Returns (M, metric, overlap fraction)."""
    M = np.asarray(M0, dtype=np.float64)
    mc = geometry.apply(np.linalg.inv(M), np.asarray(c_world, dtype=np.float64)[None])[0]  # moving-space centre
    c = np.asarray(c_world, dtype=np.float64)
    state = evaluate(M, c)
    if not np.isfinite(state[0]):
        return M, state[0], state[1]
    lam = 1e-3
    for _ in range(int(iters)):
        A, bvec, k = system(state)
        diag = torch.diagonal(A)[k:].clone()
        accepted = None
        for _try in range(5):
            Ad = A.clone()
            Ad[k:, k:] += torch.diag(lam * diag + 1e-12)
            try:
                th = torch.linalg.solve(Ad, bvec)
            except RuntimeError:
                lam *= 10.0
                continue
            dx = step(th)
            if dx is None:
                break
            dx[:3] = np.clip(dx[:3], -0.1, 0.1)            # at most ~6 degrees per step
            dx[3:] = np.clip(dx[3:], -5.0, 5.0)            # and 5 mm
            Mn = about(rotvec_matrix(dx[:3]), c, dx[3:]) @ M
            cn = geometry.apply(Mn, mc[None])[0]
            res = evaluate(Mn, cn)
            if np.isfinite(res[0]) and res[0] >= state[0]:
                accepted = (Mn, cn, res, dx)
                lam = max(lam / 3.0, 1e-7)
                break
            lam *= 10.0
        if accepted is None:
            break
        Mn, c, res, dx = accepted
        gain = res[0] - state[0]
        M, state = Mn, res
        if gain < 1e-6 or (np.degrees(np.linalg.norm(dx[:3])) < 0.005 and np.linalg.norm(dx[3:]) < 0.005):
            break
    return M, state[0], state[1]


def _refine_lm(M0: np.ndarray, lvl: _Level, c_world: np.ndarray, iters: int, torch) -> tuple[np.ndarray, float, float]:
    """Levenberg-Marquardt on the 6 rigid parameters. Maximising NCC is fitting a ~ alpha * m(x) + beta
    by weighted least squares over (alpha, beta, x); with m linearised, the fit is linear in
    (alpha, beta, alpha * dx) (variable projection), so each step solves one 8x8 system. The Jacobian
    is analytic (sampled image gradient times the derivative of the sample positions): one sampling
    pass per step. Rotations are about the moving stack's centre (``c_world`` under ``M0``)."""
    a = lvl.vals.double()

    def system(state):
        _, _, mv, w, J = state
        wd = w.double()
        X = torch.cat([mv.double()[:, None], torch.ones_like(wd)[:, None], J.double()], dim=1)
        return X.T @ (X * wd[:, None]), X.T @ (wd * a), 2

    def step(th):
        alpha = float(th[0])
        if not np.isfinite(alpha) or abs(alpha) < 1e-9:
            return None
        return (th[2:] / alpha).cpu().numpy()

    return _lm(M0, c_world, iters, lambda M, c: _ncc_and_jacobian(M, lvl, c, torch), system, step, torch)


def _hat_basis(m, knots):
    """Piecewise-linear 'hat' basis of the intensities ``m`` (P,) on ``knots`` (K,): (Phi (P, K), the
    interval index (P,), the inside-the-knot-range mask (P,)). Intensities beyond the knots are clamped."""
    import torch
    K = knots.numel()
    t = torch.clamp(m, knots[0], knots[-1])
    idx = torch.clamp(torch.searchsorted(knots, t.contiguous()) - 1, 0, K - 2)
    lo, hi = knots[idx], knots[idx + 1]
    fr = (t - lo) / (hi - lo)
    Phi = torch.zeros((m.shape[0], K), dtype=m.dtype, device=m.device)
    Phi.scatter_(1, idx[:, None], (1 - fr)[:, None])
    Phi.scatter_add_(1, (idx + 1)[:, None], fr[:, None])
    inside = (m > knots[0]) & (m < knots[-1])
    return Phi, idx, inside


def _cr_fit(mv, a, w, knots):
    """Weighted least-squares fit a ~ f(mv), f piecewise linear on ``knots``: (correlation ratio
    1 - SS_res / SS_tot, coefficients c (K,), Phi, interval index, inside mask)."""
    import torch
    Phi, idx, inside = _hat_basis(mv, knots)
    G = Phi.T @ (Phi * w[:, None])
    G = G + torch.eye(G.shape[0], dtype=G.dtype, device=G.device) * (1e-6 * float(torch.trace(G)) / G.shape[0] + 1e-9)
    c = torch.linalg.solve(G, Phi.T @ (w * a))
    r = a - Phi @ c
    sw = w.sum()
    am = (w * a).sum() / sw
    tot = (w * (a - am) ** 2).sum()
    cr = float(1.0 - (w * r * r).sum() / torch.clamp(tot, min=1e-12))
    return cr, c, Phi, idx, inside


def _cr_and_jacobian(M: np.ndarray, lvl: _Level, c: np.ndarray, knots, torch, jac: bool = True):
    """Correlation ratio of the fixed samples given the moving ones for the map ``M`` (and the pieces an
    LM step needs): (cr, overlap fraction, w, J (P, 6) or None, Phi, slope of f at the samples)."""
    ncc, frac, mv, w, J = _ncc_and_jacobian(M, lvl, c, torch, jac=jac)
    if not np.isfinite(ncc):
        return float("nan"), frac, w, None, None, None
    a = lvl.vals.double()
    wd = w.double()
    cr, coef, Phi, idx, inside = _cr_fit(mv.double(), a, wd, knots)
    slope = (coef[idx + 1] - coef[idx]) / (knots[idx + 1] - knots[idx])
    slope = torch.where(inside, slope, torch.zeros_like(slope))
    return cr, frac, wd, (None if J is None else J.double()), Phi, slope


def _refine_lm_cr(M0: np.ndarray, lvl: _Level, c_world: np.ndarray, iters: int, knots, torch) -> tuple[np.ndarray, float, float]:
    """Levenberg-Marquardt on the 6 rigid parameters maximising the correlation ratio: the fixed samples
    are fitted by a piecewise-linear function f of the moving samples, a ~ f(m(x)) (any contrast
    relation, not only a linear one). With m linearised and f' taken at the current fit, the model
    a ~ Phi(m) c + f'(m) J dx is linear in (c, dx): one (K+6)-square solve per step, as in
    :func:`_refine_lm` (which is the special case f(m) = alpha m + beta)."""
    a = lvl.vals.double()
    K = knots.numel()

    def system(state):
        _, _, w, J, Phi, slope = state
        X = torch.cat([Phi, slope[:, None] * J], dim=1)
        A = X.T @ (X * w[:, None])
        A[:K, :K] += torch.eye(K, dtype=A.dtype) * (1e-6 * float(torch.trace(A[:K, :K])) / K + 1e-9)
        return A, X.T @ (w * a), K

    def step(th):
        dx = th[K:].cpu().numpy()
        return dx if np.all(np.isfinite(dx)) else None

    return _lm(M0, c_world, iters, lambda M, c: _cr_and_jacobian(M, lvl, c, knots, torch), system, step, torch)


def _eval_ncc(M: np.ndarray, lvl: _Level, torch, dev=None) -> float:
    """The level's NCC for the moving->fixed map ``M`` (nan when the overlap is tiny); used by
    benchmarks/calibrate_ours_threshold.py."""
    return _ncc_and_jacobian(M, lvl, np.zeros(3), torch, jac=False)[0]


def register_ours(moving: Volume, fixed: Volume, *, params: dict | None = None, progress=None,
                  device: str = "cpu", seed: int = 0) -> RegistrationResult:
    torch = _torch()
    p = dict(OURS_DEFAULTS)
    p.update(params or {})
    unknown = set(p) - set(OURS_DEFAULTS) - {"initial_transform"}
    if unknown:
        raise InputError(f"unknown parameter(s) for the search engine: {', '.join(sorted(unknown))}")
    n_before = torch.get_num_threads()
    want = int(p["torch_threads"] or n_before)
    if want != n_before:
        torch.set_num_threads(want)
    try:
        return _register_ours(moving, fixed, p, progress, device, seed, torch)
    finally:
        if want != n_before:
            torch.set_num_threads(n_before)


def _register_ours(moving: Volume, fixed: Volume, p: dict, progress, device, seed, torch) -> RegistrationResult:
    dev = resolve_device(device)
    t0 = time.perf_counter()
    mov = np.asarray(moving.array, dtype=np.float32)
    mov = mov / robust_scale(mov)
    # everything on the fixed side works from the axial stack block-averaged in-plane to the finest
    # level (e.g. 0.5 mm -> 2 mm): 16x fewer voxels for masks, smoothing and the search
    fixed = block_mean(fixed, level_factors(fixed, min(float(v) for v in p["levels_mm"])))
    fix = np.asarray(fixed.array, dtype=np.float32)
    fix = fix / robust_scale(fix)
    fix_mask = signal_mask(fix, float(p["fixed_mask_frac"]), dilate=1) if float(p["fixed_mask_frac"]) > 0 else \
        np.ones(fix.shape, dtype=bool)
    M0 = np.asarray(p.get("initial_transform") if p.get("initial_transform") is not None else np.eye(4), dtype=np.float64)
    init = p["init"]
    if init not in ("search", "header", "center"):
        raise InputError(f"init must be 'search', 'header' or 'center', got {init!r}")
    if p["optimizer"] not in ("lm", "lbfgs"):
        raise InputError(f"optimizer must be 'lm' or 'lbfgs', got {p['optimizer']!r}")
    if p["similarity"] not in ("ncc", "cr"):
        raise InputError(f"similarity must be 'ncc' or 'cr', got {p['similarity']!r}")
    if p["similarity"] == "cr":
        if p["optimizer"] != "lm":
            raise InputError("similarity 'cr' needs optimizer 'lm'")
        nb = int(p["cr_bins"])
        if nb < 3:
            raise InputError(f"cr_bins must be at least 3, got {nb}")
        sub = mov.ravel()[:: max(1, mov.size // 200000)]          # a regular subsample is plenty for quantiles
        fg = sub[sub > 0.02]
        qs = np.quantile(fg, np.linspace(0.0, 1.0, nb)) if fg.size else np.linspace(0.02, 1.0, nb)
        knots_np = np.unique(np.concatenate([[0.0], qs]))
        cr_knots = torch.from_numpy(knots_np.astype(np.float64))

    if init == "center":
        M0 = center_init(moving.with_array(mov), fixed.with_array(fix)) @ M0
    levels = list(p["levels_mm"])
    iters = list(p["iterations"])
    maxp = list(p["max_points"])
    if not levels or len(iters) != len(levels) or len(maxp) != len(levels):
        raise InputError(f"levels_mm, iterations and max_points need one entry per level; got "
                         f"{len(levels)}, {len(iters)} and {len(maxp)}")
    n_steps = len(levels) + 4
    details: dict = {"init": init}
    timings: dict = {"prepare": time.perf_counter() - t0}
    cands = [(float("nan"), M0)]
    if init in ("search", "center"):
        t1 = time.perf_counter()
        edges = knots_np[1:-1] if p["similarity"] == "cr" else None     # bins of the ratio's FFT search
        cands = _fft_ncc_search(mov, moving, fix, fixed, fix_mask, M0, p, torch, progress, edges)
        if init == "search" and p.get("also_search_from_center"):
            # a second search around the signal centroids (the headers' rotation kept), pooled with
            # the first: it finds cases whose header positions are off by more than the search range,
            # or where a wrong peak near the header start outscores the true one further away
            Mc = center_init(moving.with_array(mov), fixed.with_array(fix)) @ M0
            cands = sorted(cands + _fft_ncc_search(mov, moving, fix, fixed, fix_mask, Mc, p, torch, None, edges),
                           key=lambda c: -c[0])
        details["search_best_ncc"] = cands[0][0]
        timings["search"] = time.perf_counter() - t1
        cands = _distinct(cands, int(p["top_k"]))
    t1 = time.perf_counter()
    c_world_of = lambda M: geometry.apply(M, moving.center_world()[None])[0]  # noqa: E731
    def _refine(M_start, lvl, c, iters_, torch_, dev_):
        if p["similarity"] == "cr":
            return _refine_lm_cr(M_start, lvl, c, iters_, cr_knots, torch_)
        if p["optimizer"] == "lm":
            return _refine_lm(M_start, lvl, c, iters_, torch_)
        return _refine_lbfgs(M_start, lvl, c, iters_, torch_, dev_)
    lvl0 = _Level(moving, mov, fixed, fix, fix_mask, levels[0], int(p["profile_samples"]), maxp[0], seed, torch, dev)
    screen = int(p["screen_iterations"]) if len(cands) > 1 else 0
    best = None
    for _, Mc in cands:       # every candidate gets a short refinement (all of it when there is one)
        M, ncc, frac = _refine(Mc, lvl0, c_world_of(Mc), screen or iters[0], torch, dev)
        if best is None or ncc > best[1]:
            best = (M, ncc, frac)
    M, ncc, frac = best
    if screen and iters[0] > screen:     # the best screened candidate finishes the level
        M2, ncc2, frac2 = _refine(M, lvl0, c_world_of(M), iters[0] - screen, torch, dev)
        if np.isfinite(ncc2) and ncc2 >= ncc:
            M, ncc, frac = M2, ncc2, frac2
    timings[f"level_{levels[0]:g}mm"] = time.perf_counter() - t1
    report(progress, "register", n_steps - len(levels) + 1, n_steps)
    level_ncc = [ncc]
    for li in range(1, len(levels)):
        t1 = time.perf_counter()
        lvl = _Level(moving, mov, fixed, fix, fix_mask, levels[li], int(p["profile_samples"]), maxp[li], seed + li, torch, dev)
        M2, ncc2, frac2 = _refine(M, lvl, c_world_of(M), iters[li], torch, dev)
        if np.isfinite(ncc2):
            M, ncc, frac = M2, ncc2, frac2
        level_ncc.append(ncc)
        timings[f"level_{levels[li]:g}mm"] = time.perf_counter() - t1
        report(progress, "register", n_steps - len(levels) + 1 + li, n_steps)
    report(progress, "register", n_steps, n_steps)
    details.update({"level_ncc": [float(v) for v in level_ncc], "overlap_fraction": float(frac),
                    "levels_mm": [float(v) for v in levels], "success_threshold_ncc": float(p["success_ncc"]),
                    "device": str(dev), "seconds": {k: round(v, 4) for k, v in timings.items()}})
    ok = bool(np.isfinite(ncc) and ncc >= float(p["success_ncc"]))
    return RegistrationResult(moving_to_fixed=M, method="search-ncc", metric=float(ncc), success=ok, details=details)


# ============================================================================ search-cr (default)

#: search-cr's success rule: the forward (coronal -> axial) and backward (axial -> coronal) registrations,
#: each with its own global search and its own direction of the correlation ratio, must agree to within
#: this mean distance (mm) over the overlap. Chosen on 24 simulated cases of the 4 tuning patients
#: (best flag agreement, 92%; ties to the smaller value), checked on 6 cases of the held-out patient
#: (83%): benchmarks/results/real_calibration/ and benchmarks/calibrate_consistency.py.
SEARCH_CR_CONSISTENCY_MM = 2.0
SEARCH_CR_DEFAULTS = dict(
    OURS_DEFAULTS,
    similarity="cr",
    search_feature="gradmag",    # the FFT search compares gradient magnitudes (contrast-independent edges)
    fixed_mask_frac=0.0,         # every fixed voxel counts (the head outline against the background)
    cr_bins=16,
    also_search_from_center=True,
    iterations=(40, 30),         # LM on the ratio converges more slowly than on NCC (it stops once converged)
    success_ncc=0.0,             # not used: success comes from the consistency check
)
SEARCH_CR_DEFAULTS["consistency"] = True          # run the backward registration as well
SEARCH_CR_DEFAULTS["consistency_mm"] = SEARCH_CR_CONSISTENCY_MM
SEARCH_CR_DEFAULTS["symmetric"] = True            # consistent results: the rigid mean of both estimates
SEARCH_CR_DEFAULTS["rescue"] = True               # inconsistent: refine each direction from the other's result
SEARCH_CR_DEFAULTS["passes"] = 2                  # still inconsistent: search again around the forward result


def midpoint_transform(moving: Volume, fixed: Volume, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The rigid transform closest (least squares over the overlap) to the point-wise mean of the two
    moving->fixed transforms ``A`` and ``B`` (Kabsch)."""
    from .metrics import overlap_points
    P = overlap_points(moving, fixed, A, max_points=4000)
    if len(P) < 4:
        return np.asarray(A, dtype=np.float64)
    Q = 0.5 * (geometry.apply(A, P) + geometry.apply(B, P))
    pc, qc = P.mean(0), Q.mean(0)
    U, _, Vt = np.linalg.svd((P - pc).T @ (Q - qc))
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = qc - R @ pc
    return M


def consistency_mm(moving: Volume, fixed: Volume, forward: np.ndarray, backward: np.ndarray) -> float:
    """Mean distance (mm, fixed world) between where ``forward`` (moving->fixed) and ``inv(backward)``
    (backward: fixed->moving) put the moving stack's signal voxels that fall inside the fixed stack."""
    from .metrics import overlap_points
    pts = overlap_points(moving, fixed, forward, max_points=4000)
    if not len(pts):
        return float("inf")
    a = geometry.apply(forward, pts)
    b = geometry.apply(np.linalg.inv(backward), pts)
    return float(np.linalg.norm(a - b, axis=1).mean())


def _forward_backward(moving, fixed, fixed_1mm, fwd, p, pb, tol, rescue, device, seed):
    """The backward registration for the forward result ``fwd`` and their disagreement (mm), with the
    rescue: when they disagree, each direction is refined again from the other's result and keeps
    whichever of its two results its own metric prefers (one of them may sit in a local optimum that
    the other's result escapes). Returns (fwd, bwd, mm, which directions took the other's start)."""
    bwd = register_ours(fixed_1mm, moving, params=pb, progress=None, device=device, seed=seed + 1)
    d = consistency_mm(moving, fixed, fwd.moving_to_fixed, bwd.moving_to_fixed)
    swapped = []
    if not (np.isfinite(d) and d <= tol) and rescue:
        ph = dict(p, init="header", initial_transform=np.linalg.inv(bwd.moving_to_fixed))
        f2 = register_ours(moving, fixed, params=ph, progress=None, device=device, seed=seed)
        pbh = dict(pb, init="header", initial_transform=np.linalg.inv(fwd.moving_to_fixed))
        b2 = register_ours(fixed_1mm, moving, params=pbh, progress=None, device=device, seed=seed + 1)
        if np.isfinite(f2.metric) and f2.metric > fwd.metric:
            fwd = f2
            swapped.append("forward")
        if np.isfinite(b2.metric) and b2.metric > bwd.metric:
            bwd = b2
            swapped.append("backward")
        d = consistency_mm(moving, fixed, fwd.moving_to_fixed, bwd.moving_to_fixed)
    return fwd, bwd, d, swapped


def register_search_cr(moving: Volume, fixed: Volume, *, params: dict | None = None, progress=None,
                       device: str = "cpu", seed: int = 0) -> RegistrationResult:
    """The default: global FFT search on gradient magnitudes, then Levenberg-Marquardt on the
    correlation ratio, on the original ceT1 against the T2 (no translator needed). With
    ``consistency`` the same is run backward (axial -> coronal, the other direction of the ratio) and
    the result counts as successful only when both agree (:data:`SEARCH_CR_CONSISTENCY_MM`)."""
    p = dict(SEARCH_CR_DEFAULTS)
    p.update(params or {})
    unknown = set(p) - set(SEARCH_CR_DEFAULTS) - {"initial_transform"}
    if unknown:
        raise InputError(f"unknown parameter(s) for method 'search-cr': {', '.join(sorted(unknown))}")
    check = bool(p.pop("consistency"))
    symmetric = bool(p.pop("symmetric"))
    rescue = bool(p.pop("rescue"))
    passes = int(p.pop("passes"))
    tol = float(p.pop("consistency_mm"))
    t0 = time.perf_counter()
    fwd = register_ours(moving, fixed, params=dict(p), progress=progress, device=device, seed=seed)
    M = fwd.moving_to_fixed
    details = dict(fwd.details)
    details["similarity"] = "correlation ratio (fixed given moving), search on gradient magnitude"
    success = None
    if check:
        # the axial stack as the backward moving image, block-averaged in-plane to about 1 mm (its
        # finest level samples it at 4 mm: the native 0.5 mm grid only costs time)
        fixed_1mm = block_mean(fixed, level_factors(fixed, 1.0))
        pb = dict(p)
        if pb["init"] == "header":          # the check always runs its own global search
            pb["init"] = "search"
        if pb.get("initial_transform") is not None:
            pb["initial_transform"] = np.linalg.inv(np.asarray(pb["initial_transform"], dtype=np.float64))
        history = []
        for k in range(max(1, passes)):
            if k > 0:
                # still no agreement: both searches again, centred on the current forward estimate
                # (a rotation beyond the search lattice is reached in two steps)
                p = dict(p, init="search", initial_transform=fwd.moving_to_fixed)
                pb = dict(pb, init="search", initial_transform=np.linalg.inv(fwd.moving_to_fixed))
                f_new = register_ours(moving, fixed, params=dict(p), progress=None, device=device, seed=seed)
            else:
                f_new = fwd
            f_new, b_new, d_new, swapped = _forward_backward(moving, fixed, fixed_1mm, f_new, p, pb, tol, rescue,
                                                             device, seed)
            history.append({"pass": k + 1, "mm": d_new, "restarted_from_the_other": swapped})
            if k == 0 or d_new < d:
                fwd, bwd, d = f_new, b_new, d_new
            if np.isfinite(d) and d <= tol:
                break
        M = fwd.moving_to_fixed
        details["consistency"] = {"mm": d, "threshold_mm": tol, "backward_metric": float(bwd.metric),
                                  "restarted_from_the_other": history[0]["restarted_from_the_other"],
                                  "passes": history,
                                  "backward_fixed_to_moving_ras": np.asarray(bwd.moving_to_fixed).tolist(),
                                  "forward_moving_to_fixed_ras": np.asarray(fwd.moving_to_fixed).tolist()}
        success = bool(np.isfinite(d) and d <= tol)
        if success and symmetric:
            # two independent estimates that agree: their rigid mean halves the error variance
            M = midpoint_transform(moving, fixed, fwd.moving_to_fixed, np.linalg.inv(bwd.moving_to_fixed))
            details["result"] = "rigid mean of the forward and backward estimates"
        else:
            details["result"] = "forward estimate"
    else:
        details["consistency"] = None
        details["success_note"] = "no consistency check was run (consistency=False): success is unknown"
    details["seconds"] = dict(details.get("seconds", {}), total=round(time.perf_counter() - t0, 4))
    details["level_ncc"] = fwd.details.get("level_ncc")
    return RegistrationResult(moving_to_fixed=M, method="search-cr", metric=float(fwd.metric),
                              success=success, details=details)


def _distinct(cands, k: int, min_mm: float = 6.0, min_deg: float = 5.0):
    out = []
    for s, M in cands:
        if not np.isfinite(s):
            continue
        if all(not (np.linalg.norm(M[:3, 3] - N[:3, 3]) < min_mm and
                    geometry.rotation_angle_deg(M @ np.linalg.inv(N)) < min_deg) for _, N in out):
            out.append((s, M))
        if len(out) >= k:
            break
    return out or cands[:1]


# ============================================================================ paper

def _histogram_match(src: np.ndarray, ref: np.ndarray, src_mask: np.ndarray, ref_mask: np.ndarray) -> np.ndarray:
    """Quantile mapping of ``src`` onto ``ref`` computed over the masks (area with both modalities)."""
    qs = np.linspace(0, 100, 257)
    sq = np.percentile(src[src_mask], qs)
    rq = np.percentile(ref[ref_mask], qs)
    sq = np.maximum.accumulate(sq + np.arange(len(sq)) * 1e-9)
    return np.interp(src, sq, rq).astype(np.float32)


def register_paper(moving: Volume, fixed: Volume, *, params: dict | None = None, progress=None,
                   device: str = "cpu") -> RegistrationResult:
    """The paper's subset search (Sec. 3.5), vectorised. See the module docstring and docs."""
    torch = _torch()
    import torch.nn.functional as F

    p = dict(PAPER_DEFAULTS)
    p.update(params or {})
    unknown = set(p) - set(PAPER_DEFAULTS)
    if unknown:
        raise InputError(f"unknown parameter(s) for method 'paper': {', '.join(sorted(unknown))}")
    if p["normalisation"] not in ("simple", "histogram"):
        raise InputError("normalisation must be 'simple' or 'histogram'")
    if p["rotations"] not in ("inplane", "all"):
        raise InputError("rotations must be 'inplane' or 'all'")
    dev = resolve_device(device)

    # --- 3.5.1: interpolate the converted coronal stack along its slice axis to the axial spacing
    kf = slice_axis(fixed)
    perm, signs = axis_correspondence(moving, fixed)
    km = slice_axis(moving)
    fa = int(np.flatnonzero(perm == km)[0])              # fixed axis that the moving slice axis maps to
    fine = interpolate_slice_axis(moving, float(fixed.spacing[fa]), axis=km)
    # the rows along the axial slice normal are re-interpolated so that the axial spacing is an exact
    # whole number of rows (the skip of Sec. 3.5.2)
    ra = int(perm[kf])
    skip = max(1, int(round(float(fixed.spacing[kf]) / float(fine.spacing[ra]))))
    fine = interpolate_slice_axis(fine, float(fixed.spacing[kf]) / skip, axis=ra)
    report(progress, "subsets", 0, 1)
    plan = plan_for(fine, fixed)                           # 3.5.2: enumerate and prune subsets
    report(progress, "subsets", 1, 1)
    starts = plan.kept_starts[:: max(1, int(p["subset_stride"]))]

    # --- fixed slices at the working pixel size, intensity normalisation
    fixv = Volume(np.asarray(fixed.array, dtype=np.float32), fixed.affine)
    fixv = fixv.with_array(fixv.array * (1000.0 / robust_scale(fixv.array)))
    fl = block_mean(fixv, level_factors(fixed, float(p["pixel_mm"])))
    fix_arr = np.moveaxis(fl.array, kf, 0)                 # (K, U, V)
    inpl = [a for a in range(3) if a != kf]                # fixed in-plane axes, in (U, V) order
    mov_arr = np.asarray(fine.array, dtype=np.float32)
    lo_f, hi_f = float(np.percentile(fixv.array, 0.5)), float(np.percentile(fixv.array, 99.5))
    lo_m, hi_m = float(np.percentile(mov_arr, 0.5)), float(np.percentile(mov_arr, 99.5))
    mov_arr = (mov_arr - lo_m) / max(hi_m - lo_m, 1e-6) * (hi_f - lo_f) + lo_f   # "simple normalisation"
    if p["normalisation"] == "histogram":
        mov_arr = _histogram_match(mov_arr, fix_arr, mov_arr > lo_f + 0.05 * (hi_f - lo_f),
                                   fix_arr > lo_f + 0.05 * (hi_f - lo_f))
    mov_arr = smooth_for(fine.with_array(mov_arr), float(p["pixel_mm"]))
    mov_t = torch.from_numpy(np.ascontiguousarray(mov_arr))[None, None].to(dev)
    fix_t = torch.from_numpy(np.ascontiguousarray(fix_arr)).to(dev)
    K, U, V = fix_arr.shape

    # --- geometry of the centre initialisation, in voxel units (headers' positions unused)
    # fixed pixel (u, v) of slice k -> mm offsets from the fixed slice centre along the fixed in-plane
    # axes -> the matching moving axes (by direction cosines), centred on the moving in-plane centre;
    # fixed slice k -> moving row start + k * skip (row direction following the fixed slice axis).
    sp_fl = fl.spacing
    row_ax = plan.row_axis
    m_axes = [int(perm[a]) for a in inpl]                   # moving axes for U and V
    m_sign = [float(signs[a]) for a in inpl]
    sp_m = fine.spacing
    cu, cv = (U - 1) / 2.0, (V - 1) / 2.0
    mc = (np.asarray(fine.shape, dtype=np.float64) - 1) / 2.0
    uu, vv = np.meshgrid(np.arange(U) - cu, np.arange(V) - cv, indexing="ij")
    du = torch.from_numpy(uu * sp_fl[inpl[0]]).to(dev)       # mm
    dv = torch.from_numpy(vv * sp_fl[inpl[1]]).to(dev)
    rowsign = plan.row_sign
    kk = torch.arange(K, dtype=torch.float64, device=dev)
    size = torch.tensor(fine.shape, dtype=torch.float64, device=dev)
    pix = float(p["pixel_mm"])

    def rows_for(start_t):                                  # (B,) -> (B, K) moving row index per fixed slice
        if rowsign >= 0:
            return start_t[:, None] + plan.skip * kk[None, :]
        return start_t[:, None] + plan.skip * (K - 1 - kk[None, :])

    # rows of the fine volume laid side by side in one tall 2D image (one zero line between them), so
    # that in-plane-only moves sample with a coherent 2D bilinear lookup (much faster than 3D)
    order = [row_ax, m_axes[0], m_axes[1]]
    rows_img = np.transpose(mov_arr, order)                                  # (Nr, H0, W0)
    Nr, H0, W0 = rows_img.shape
    tall = np.zeros((Nr, H0 + 2, W0), dtype=np.float32)
    tall[:, 1:-1] = rows_img
    tall_t = torch.from_numpy(tall.reshape(1, 1, Nr * (H0 + 2), W0)).to(dev)
    Hb = Nr * (H0 + 2)
    du32, dv32 = du.float(), dv.float()

    def mse_2d(start_t, prm):
        B = prm.shape[0]
        prm = prm.float()
        th = prm[:, 2] * (math.pi / 180)
        ct, st = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
        u0 = du32[None] - prm[:, 0, None, None] * pix
        v0 = dv32[None] - prm[:, 1, None, None] * pix
        a = mc[m_axes[0]] + m_sign[0] * (ct * u0 + st * v0) / sp_m[m_axes[0]]      # (B, U, V)
        b = mc[m_axes[1]] + m_sign[1] * (-st * u0 + ct * v0) / sp_m[m_axes[1]]
        ok = ((a > -0.5) & (a < H0 - 0.5)).float()
        rows = rows_for(start_t).float()                                       # (B, K)
        y = rows[:, :, None, None] * (H0 + 2) + 1.0 + a[:, None]               # (B, K, U, V)
        x = (b[:, None] * (2.0 / (W0 - 1)) - 1.0).expand(B, K, U, V)
        grid = torch.stack([x, y * (2.0 / (Hb - 1)) - 1.0], dim=-1).reshape(1, B * K * U, V, 2)
        vals = F.grid_sample(tall_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        vals = vals.reshape(B, K, U, V) * ok[:, None]
        err = (vals - fix_t[None].float()) ** 2
        return err.mean(dim=(2, 3)).mean(dim=1).double()

    def mse_of(start_t, prm):
        """prm (B, 5): tu, tv (working pixels), theta (deg, about the slice normal), a, b (deg, tilts
        about the U and V axes). Returns per-subset mean over slices of the per-slice MSE (B,)."""
        B = prm.shape[0]
        th = prm[:, 2] * (math.pi / 180)
        ct, st = torch.cos(th)[:, None, None, None], torch.sin(th)[:, None, None, None]
        # inverse map: fixed pixel -> rotate by -theta about centre, shift by -t (mm)
        u0 = du[None, None] - prm[:, 0, None, None, None] * pix
        v0 = dv[None, None] - prm[:, 1, None, None, None] * pix
        u1 = ct * u0 + st * v0
        v1 = -st * u0 + ct * v0
        rows = rows_for(start_t)[:, :, None, None].expand(B, K, U, V)
        # tilts: the through-plane position varies linearly with the in-plane position
        ta = torch.tan(prm[:, 3] * (math.pi / 180))[:, None, None, None]
        tb = torch.tan(prm[:, 4] * (math.pi / 180))[:, None, None, None]
        rows = rows + (ta * v1 - tb * u1) / plan.row_mm * rowsign
        coords = [None, None, None]
        coords[row_ax] = rows
        coords[m_axes[0]] = mc[m_axes[0]] + m_sign[0] * u1.expand(B, K, U, V) / sp_m[m_axes[0]]
        coords[m_axes[1]] = mc[m_axes[1]] + m_sign[1] * v1.expand(B, K, U, V) / sp_m[m_axes[1]]
        vox = torch.stack(coords, dim=-1)
        norm = 2.0 * vox / (size - 1.0) - 1.0
        grid = norm[..., [2, 1, 0]].to(mov_t.dtype).reshape(1, B * K, U, V, 3)
        vals = F.grid_sample(mov_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        vals = vals.reshape(B, K, U, V)
        err = (vals - fix_t[None]) ** 2
        return err.mean(dim=(2, 3)).mean(dim=1)

    n_iter = int(p["n_iter"])
    lr0 = float(p["lr0"])
    rstep = float(p["rot_step_deg"])
    n_dof = 5 if p["rotations"] == "all" else 3
    probes = [np.zeros(5)]
    for d in range(n_dof):
        for s in (+1, -1):
            e = np.zeros(5)
            e[d] = s
            probes.append(e)
    probes = torch.from_numpy(np.stack(probes)).to(dev)    # (P, 5) unit moves
    Pn = probes.shape[0]
    chunk = max(1, int(3e6 // max(1, Pn * K * U * V)))
    all_mse = np.full(len(starts), np.inf)
    all_prm = np.zeros((len(starts), 5))
    total = int(math.ceil(len(starts) / chunk))
    with torch.no_grad():
        for ci in range(total):
            st_np = starts[ci * chunk:(ci + 1) * chunk].astype(np.float64)
            B = len(st_np)
            st_t = torch.from_numpy(st_np).to(dev)
            prm = torch.zeros(B, 5, dtype=torch.float64, device=dev)
            cur = None
            for i in range(n_iter):
                lr_i = lr0 / (1.0 + i / n_iter)                       # Eq. 1
                scale = torch.tensor([lr_i, lr_i, rstep, rstep, rstep], dtype=torch.float64, device=dev)
                cand = prm[:, None, :] + probes[None] * scale[None, None]   # (B, P, 5)
                fn = mse_2d if n_dof == 3 else mse_of
                m = fn(st_t.repeat_interleave(Pn), cand.reshape(B * Pn, 5)).reshape(B, Pn)
                best = torch.argmin(m, dim=1)
                prm = cand[torch.arange(B), best]
                cur = m[torch.arange(B), best]
            all_mse[ci * chunk: ci * chunk + B] = cur.cpu().numpy()
            all_prm[ci * chunk: ci * chunk + B] = prm.cpu().numpy()
            report(progress, "register", ci + 1, total)
    b = int(np.argmin(all_mse))
    start, prm = int(starts[b]), all_prm[b]

    # --- the chosen voxel map as a world transform: moving(fine) voxel -> fixed voxel, then affines
    M = _paper_world_transform(start, prm, plan, fine, fl, fixed, kf, inpl, m_axes, m_sign, pix)
    thr = float(p["success_mse"])
    mse = float(all_mse[b])
    curve = np.full(plan.n_enumerated, np.nan)
    idx_kept = np.flatnonzero(plan.kept)[:: max(1, int(p["subset_stride"]))]
    curve[idx_kept] = all_mse
    details = {"n_subsets_enumerated": plan.n_enumerated, "n_subsets_kept": int(plan.kept.sum()),
               "n_subsets_evaluated": int(len(starts)), "skip_rows": plan.skip, "row_mm": plan.row_mm,
               "best_start_row": start, "params_px_deg": [float(v) for v in prm],
               "lr_schedule": "lr_i = lr_0 / (1 + i / n)", "lr0": lr0, "n_iter": n_iter,
               "pixel_mm": pix, "normalisation": p["normalisation"], "success_threshold_mse": thr,
               "subset_metrics_kept_only": [float(v) for v in all_mse]}
    return RegistrationResult(moving_to_fixed=M, method="paper", metric=mse, success=bool(mse <= thr),
                              subset_index=int(np.flatnonzero(plan.kept)[:: max(1, int(p["subset_stride"]))][b]),
                              subset_metrics=[None if not np.isfinite(v) else float(v) for v in curve],
                              details=details)


def _paper_world_transform(start, prm, plan, fine: Volume, fl: Volume, fixed: Volume, kf, inpl, m_axes, m_sign,
                           pix) -> np.ndarray:
    """World (RAS) moving->fixed matrix equivalent to the paper's voxel placement of a subset."""
    # Build the fixed-voxel(level grid) -> fine-moving-voxel affine map from three sample points + origin.
    K = fl.shape[kf]
    U, V = fl.shape[inpl[0]], fl.shape[inpl[1]]
    cu, cv = (U - 1) / 2.0, (V - 1) / 2.0
    mc = (np.asarray(fine.shape, dtype=np.float64) - 1) / 2.0
    sp_fl, sp_m = fl.spacing, fine.spacing
    th = math.radians(prm[2])
    ta, tb = math.tan(math.radians(prm[3])), math.tan(math.radians(prm[4]))

    def fmap(idx):
        k, u, v = idx[kf], idx[inpl[0]], idx[inpl[1]]
        u0 = (u - cu) * sp_fl[inpl[0]] - prm[0] * pix
        v0 = (v - cv) * sp_fl[inpl[1]] - prm[1] * pix
        u1 = math.cos(th) * u0 + math.sin(th) * v0
        v1 = -math.sin(th) * u0 + math.cos(th) * v0
        row = start + plan.skip * (k if plan.row_sign >= 0 else (K - 1 - k))
        row += (ta * v1 - tb * u1) / plan.row_mm * plan.row_sign
        out = np.zeros(3)
        out[plan.row_axis] = row
        out[m_axes[0]] = mc[m_axes[0]] + m_sign[0] * u1 / sp_m[m_axes[0]]
        out[m_axes[1]] = mc[m_axes[1]] + m_sign[1] * v1 / sp_m[m_axes[1]]
        return out

    P = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    Q = np.array([fmap(q) for q in P])
    Vmap = np.eye(4)                                        # fixed-level voxel -> fine moving voxel
    Vmap[:3, 3] = Q[0]
    for a in range(3):
        Vmap[:3, a] = Q[a + 1] - Q[0]
    fixed_to_moving_world = fine.affine @ Vmap @ np.linalg.inv(fl.affine)
    M = np.linalg.inv(fixed_to_moving_world)
    # the voxel map is rigid in mm up to the (tiny) tilt shear; project onto the nearest rotation
    U_, _, Vt = np.linalg.svd(M[:3, :3])
    R = U_ @ Vt
    if np.linalg.det(R) < 0:
        R = U_ @ np.diag([1, 1, -1]) @ Vt
    c = fixed.center_world()
    cm = geometry.apply(np.linalg.inv(M), c[None])[0]
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = c - R @ cm
    return out

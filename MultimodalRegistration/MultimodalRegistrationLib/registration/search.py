"""The global search: masked NCC (or the correlation ratio) over every translation, by FFT, for each
rotation of a lattice around the start (Padfield 2012; Roche et al. 1998 for the ratio)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import fft as sfft

from .. import geometry
from ..geometry import about, rotvec_matrix
from ..progress import report
from ..volume import Volume
from .images import gradient_magnitude
from .pyramid import shrink_inplane, smooth_for


#: the NCC search scores its rotations in batches of about this many grid voxels (each batch holds some
#: twenty float32/complex64 arrays of this size: about 0.3 GB at 2M)
_BATCH_VOXELS = 2_000_000


def rotation_lattice(radius_deg: float, step_deg: float, kind: str = "cubic") -> list[np.ndarray]:
    """Rotation vectors (radians) within ``radius_deg`` of no rotation, smallest first, on a lattice of
    cube side ``step_deg``: ``"cubic"`` (the cube corners; every rotation of the ball lies within
    step * sqrt(3) / 2 of one of them) or ``"bcc"`` (body-centred cubic: the corners and the cube
    centres; within step * sqrt(5) / 4, so a side of 1.55 times the cubic one covers the ball as
    closely with about half the rotations, the thinnest covering of space by a lattice)."""
    if radius_deg <= 0 or step_deg <= 0:
        return [np.zeros(3)]
    if kind not in ("cubic", "bcc"):
        raise ValueError(f"rotation lattice must be 'cubic' or 'bcc', got {kind!r}")
    n = int(math.floor(radius_deg / step_deg + 1e-9)) + 1
    shifts = (0.0,) if kind == "cubic" else (0.0, 0.5)
    out = []
    for a in range(-n, n + 1):
        for b in range(-n, n + 1):
            for c in range(-n, n + 1):
                for h in shifts:
                    v = (np.array([a, b, c], dtype=np.float64) + h) * step_deg
                    if np.linalg.norm(v) <= radius_deg + 1e-6:
                        out.append(np.radians(v))
    out.sort(key=lambda v: float(np.linalg.norm(v)))
    return out


def _rfft(a):
    return sfft.rfftn(a, workers=1)


def _rfft_many(a):
    """The 3-D real FFT of each volume of a stack (n, I, J, K)."""
    return sfft.rfftn(a, axes=(-3, -2, -1), workers=1)


#: one grid serves a search's windows only while it is at most this much larger (voxels) than a grid
#: for one window: beyond that (starts far apart, e.g. headers whose positions are meaningless), each
#: window gets its own grid (the FFTs of the larger grid would cost more than a second set of small ones)
JOINT_MAX_GROWTH = 1.6


def _grid_box(fixed: Volume, grid_mm: float, shift_mm: float, offsets_along: np.ndarray):
    """Lower corner (mm along the fixed axes) and FFT-friendly shape of a search grid aligned with the
    fixed stack, with room for the shifts within ``shift_mm`` of each offset (mm along the fixed axes,
    (W, 3)) in whole grid steps: the grid points stay where a grid for the shifts around no offset puts
    them."""
    corners = np.array([[i, j, k] for i in (0, fixed.shape[0] - 1) for j in (0, fixed.shape[1] - 1)
                        for k in (0, fixed.shape[2] - 1)], dtype=np.float64)
    along = fixed.voxel_to_world(corners) @ fixed.direction          # coordinates along the fixed axes
    # a shift t pairs the moving sample at x with the fixed one at x + t: positive shifts need room
    # below the fixed stack, negative ones above it
    below = np.ceil(np.maximum(offsets_along.max(0), 0.0) / grid_mm) * grid_mm
    above = np.ceil(np.maximum(-offsets_along.min(0), 0.0) / grid_mm) * grid_mm
    lo = along.min(0) - shift_mm - grid_mm - below
    hi = along.max(0) + shift_mm + grid_mm + above
    shape = tuple(int(sfft.next_fast_len(int(np.ceil((h - l) / grid_mm)) + 1, real=True)) for l, h in zip(lo, hi))
    return lo, shape


class SearchGrid:
    """The fixed side of the masked-NCC FFT search (Padfield 2012) on an isotropic grid of ``grid_mm``
    aligned with the fixed stack (FFT-friendly sizes, float32), padded for the shifts of its windows:
    window k holds the shifts within ``shift_mm`` (per fixed axis) of ``offsets[k]`` (world, mm;
    default: one window around no shift). A start translated by tau and rotated about its translated
    centre is the start's rotated pose translated by tau, so its scores are those of the start's pose at
    the shifts around tau: one set of FFTs per rotation scores the searches around both starts."""

    def __init__(self, fixed_smooth: np.ndarray, fixed: Volume, fixed_mask: np.ndarray, grid_mm: float,
                 shift_mm: float, offsets=None):
        direction = fixed.direction
        offsets = np.zeros((1, 3)) if offsets is None else np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
        along_off = offsets @ direction                                 # each offset along the fixed axes
        lo, self.shape = _grid_box(fixed, grid_mm, shift_mm, along_off)
        self.grid_mm, self.shift_mm, self.direction = grid_mm, shift_mm, direction
        index_to_world = np.eye(4)
        index_to_world[:3, :3] = direction * grid_mm
        index_to_world[:3, 3] = direction @ lo
        self.index_to_world = index_to_world
        fixed_on_grid = geometry.resample(Volume(fixed_smooth, fixed.affine), self.shape, index_to_world, order=1)
        mask_on_grid = geometry.resample(Volume(fixed_mask.astype(np.float32), fixed.affine), self.shape,
                                         index_to_world, order=1) > 0.5
        fixed_on_grid = np.where(mask_on_grid, fixed_on_grid, 0).astype(np.float32)
        self.fft_fixed = _rfft(fixed_on_grid)
        self.fft_fixed_sq = _rfft(fixed_on_grid * fixed_on_grid)
        self.fft_mask = _rfft(mask_on_grid.astype(np.float32))
        # the signed shift (grid steps) of each index of the circular correlation, per axis: index n is
        # the shift first + ((n - first) mod size), first the most negative shift a window needs (the
        # grid has room for every window's shifts, so they do not wrap onto each other)
        first = np.floor((np.minimum(along_off.min(0), 0.0) - shift_mm) / grid_mm) - 1.0
        self.shift_steps = [first[a] + np.mod(np.arange(n) - first[a], n) for a, n in enumerate(self.shape)]
        # per window, the shifts within shift_mm of its offset (a box), per grid voxel
        self.windows = []
        for off in along_off:
            ok = [np.abs(s * grid_mm - o) <= shift_mm for s, o in zip(self.shift_steps, off)]
            self.windows.append(ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :])
        self.axis_idx = [torch.arange(n, dtype=torch.float32) for n in self.shape]   # grid indices per axis

    def _irfft(self, a):
        return sfft.irfftn(a, s=self.shape, workers=1)

    def sample_moving(self, mov_t, moving: Volume, rotated: np.ndarray):
        """The moving volume (torch, (1, 1, I, J, K)) and its inside mask on this grid, through ``rotated``."""
        values, inside = self.sample_moving_many(mov_t, moving, [rotated])
        return values[0], inside[0]

    def sample_moving_many(self, mov_t, moving: Volume, rotated: list):
        """:meth:`sample_moving` for several poses at once (one sampling call): (values, inside masks),
        each (len(rotated), *shape)."""
        to_voxel = np.stack([np.linalg.inv(moving.affine) @ np.linalg.inv(r) @ self.index_to_world for r in rotated])
        # straight to grid_sample's normalised coordinates (x = the last voxel axis; align_corners: the
        # first and last voxel centres at -1 and 1), one affine per pose
        size = np.asarray(moving.shape, dtype=np.float64)
        scale = 2.0 / np.maximum(size - 1.0, 1.0)
        to_norm = to_voxel[:, :3, :] * scale[None, :, None]
        to_norm[:, :, 3] -= 1.0
        to_norm = to_norm[:, ::-1, :]
        lin = torch.from_numpy(to_norm[:, :, :3].astype(np.float32))             # (R, 3 coords, 3 axes)
        off = torch.from_numpy(to_norm[:, :, 3].astype(np.float32))              # (R, 3 coords)
        # inside the stack: within half a voxel of the outer voxel centres
        bound = (1.0 + 0.5 * scale[::-1]).tolist()
        coords, inside = [], None
        for c in range(3):      # each coordinate as a sum of per-axis terms over the (R, I, J, K) grid
            x = (lin[:, c, 0, None, None, None] * self.axis_idx[0][None, :, None, None] + off[:, c, None, None, None]) \
                + lin[:, c, 1, None, None, None] * self.axis_idx[1][None, None, :, None] \
                + lin[:, c, 2, None, None, None] * self.axis_idx[2][None, None, None, :]
            ok = x.abs() <= bound[c]
            inside = ok if inside is None else inside & ok
            coords.append(x)
        # only the points inside are sampled (a thick-slice coronal slab covers some 5-20% of the grid);
        # their flat indices once, for every coordinate and the output
        where = torch.nonzero(inside.reshape(-1)).reshape(-1)
        grid = torch.stack([x.reshape(-1)[where] for x in coords], dim=-1)
        v = torch.zeros(inside.numel(), dtype=mov_t.dtype)
        v[where] = F.grid_sample(mov_t, grid.reshape(1, -1, 1, 1, 3), mode="bilinear",
                                 padding_mode="border", align_corners=True).reshape(-1)
        return v.reshape(inside.shape).numpy(), inside.numpy()

    def _best_many(self, score: np.ndarray, overlap: np.ndarray, rotated: list) -> list:
        """Per pose of ``rotated``, per window: (best score, moving_to_fixed) over the window's shifts."""
        # a candidate must overlap at least half as much as the window's best-overlapping shift (a thin
        # coronal slab may overlap only a small part of the head; tiny overlaps give meaningless scores)
        n = len(rotated)
        floor_n = 50.0 * (6.0 / self.grid_mm) ** 3
        per_window = []
        for window in self.windows:
            best_overlap = np.where(window[None], overlap, -np.inf).reshape(n, -1).max(axis=1)
            min_n = np.maximum(0.5 * best_overlap, floor_n)
            masked = np.where((overlap < min_n[:, None, None, None]) | ~window[None], -np.inf, score)
            flat = np.argmax(masked.reshape(n, -1), axis=1)
            found = []
            for r, (f, rot) in enumerate(zip(flat, rotated)):
                idx = np.unravel_index(int(f), self.shape)
                t = np.array([self.shift_steps[a][idx[a]] for a in range(3)]) * self.grid_mm
                shift = np.eye(4)
                shift[:3, 3] = self.direction @ t
                found.append((float(masked[(r,) + idx]), shift @ rot))
            per_window.append(found)
        return [list(w) for w in zip(*per_window)]

    def score_cr(self, mov_t, moving: Volume, rotated: np.ndarray, edges: np.ndarray) -> tuple[float, np.ndarray]:
        """:meth:`score_cr_windows` of the first window."""
        return self.score_cr_windows(mov_t, moving, rotated, edges)[0]

    def score_cr_windows(self, mov_t, moving: Volume, rotated: np.ndarray, edges: np.ndarray) -> list:
        """Best correlation ratio (Roche et al. 1998) of the fixed intensities given the moving intensity
        bin, over the shifts of each window, for the rotation ``rotated``: per window (cr, moving_to_fixed).

        The moving samples are split into bins by ``edges``; with one indicator image per bin, every
        sum the ratio needs (per-bin counts and fixed sums over the overlap) is a correlation: one FFT
        product each. CR = (sum_k b_k^2 / n_k - S^2 / N) / (S2 - S^2 / N) over the overlap."""
        moving_on_grid, moving_inside = self.sample_moving(mov_t, moving, rotated)
        bins = np.digitize(moving_on_grid, edges)
        sum_fixed = overlap = explained = None
        for k in range(len(edges) + 1):
            fft_bin = np.conj(_rfft(((bins == k) & moving_inside).astype(np.float32)))
            nk = self._irfft(self.fft_mask * fft_bin)
            bk = self._irfft(self.fft_fixed * fft_bin)
            e = bk * bk / (np.maximum(nk, 0.0) + 2.0)
            explained = e if explained is None else explained + e
            overlap = nk if overlap is None else overlap + nk
            sum_fixed = bk if sum_fixed is None else sum_fixed + bk
        fft_inside = np.conj(_rfft(moving_inside.astype(np.float32)))
        sum_fixed_sq = self._irfft(self.fft_fixed_sq * fft_inside)
        n_safe = np.maximum(overlap, 1.0)
        total = sum_fixed_sq - sum_fixed * sum_fixed / n_safe
        cr = (explained - sum_fixed * sum_fixed / n_safe) / np.maximum(total, 1e-6)
        return self._best_many(cr[None], overlap[None], [rotated])[0]

    def score(self, mov_t, moving: Volume, rotated: np.ndarray) -> tuple[float, np.ndarray]:
        """Best masked NCC over the first window's shifts for the rotation ``rotated``: (ncc, moving_to_fixed)."""
        return self.score_many(mov_t, moving, [rotated])[0]

    def score_many(self, mov_t, moving: Volume, rotated: list) -> list:
        """:meth:`score` for several rotations at once (:meth:`score_windows` of the first window)."""
        return [w[0] for w in self.score_windows(mov_t, moving, rotated)]

    def score_windows(self, mov_t, moving: Volume, rotated: list) -> list:
        """Best masked NCC over each window's shifts for each of several rotations: per rotation, per
        window (ncc, moving_to_fixed). One sampling call and one batch of FFTs for all of them (the
        per-rotation work is small; one call each would mostly cost call overhead)."""
        moving_on_grid, moving_inside = self.sample_moving_many(mov_t, moving, rotated)
        inside_f = moving_inside.astype(np.float32)

        def conj_fft(a):
            out = _rfft_many(a)
            return np.conjugate(out, out=out)

        def correlate(fft_a, fft_b):
            return self._irfft_many(fft_a * fft_b)

        fft_mov = conj_fft(moving_on_grid)
        fft_mov_sq = conj_fft(moving_on_grid * moving_on_grid)
        fft_inside = conj_fft(inside_f)
        overlap = correlate(self.fft_mask, fft_inside)
        s1 = correlate(self.fft_fixed, fft_inside)
        s2 = correlate(self.fft_mask, fft_mov)
        s11 = correlate(self.fft_fixed_sq, fft_inside)
        s22 = correlate(self.fft_mask, fft_mov_sq)
        s12 = correlate(self.fft_fixed, fft_mov)
        del fft_mov, fft_mov_sq, fft_inside
        n_safe = np.maximum(overlap, 1.0)
        # the masked NCC, num / sqrt(den), evaluated in place in the same order as
        # num = s12 - s1 * s2 / n; den = (s11 - s1 * s1 / n) * (s22 - s2 * s2 / n)
        t = np.multiply(s1, s2)
        t /= n_safe
        num = np.subtract(s12, t, out=s12)
        np.multiply(s1, s1, out=t)
        t /= n_safe
        np.subtract(s11, t, out=s11)
        np.multiply(s2, s2, out=t)
        t /= n_safe
        np.subtract(s22, t, out=s22)
        den = np.multiply(s11, s22, out=s11)
        np.maximum(den, 1e-6, out=den)
        np.sqrt(den, out=den)
        ncc = np.divide(num, den, out=num)
        return self._best_many(ncc, overlap, rotated)

    def _irfft_many(self, a):
        return sfft.irfftn(a, s=self.shape, axes=(-3, -2, -1), workers=1)


def moving_for_search(mov: np.ndarray, moving: Volume, grid_mm: float):
    """The moving stack block-averaged in-plane to about grid_mm/3 and smoothed for a grid_mm grid (torch)."""
    shrunk = shrink_inplane(Volume(mov, moving.affine), grid_mm / 3.0)
    arr = smooth_for(shrunk, grid_mm)
    return torch.from_numpy(np.ascontiguousarray(arr))[None, None], shrunk


def fft_search(mov: np.ndarray, moving: Volume, fix: np.ndarray, fixed: Volume, fixed_mask: np.ndarray,
               start: np.ndarray, params, progress=None, cr_edges: np.ndarray | None = None,
               offsets=(), prepared: dict | None = None) -> list[tuple[float, np.ndarray]]:
    """Global search around ``start``: masked NCC over every translation within ``search_shift_mm`` (FFT)
    (the correlation ratio on moving-intensity bins ``cr_edges`` instead, when given and the search
    feature is the intensity) for each rotation of a lattice. Coarse to fine: every rotation is scored
    on a ``search_coarse_grid_mm`` grid, the ``search_keep`` best again on the ``search_grid_mm`` grid.
    ``params``: :class:`~.params.SearchNccParams`. ``offsets``: world translations (mm); the same search
    also runs from ``start`` translated by each of them (the same rotations, about the translated
    centre; its own ``search_keep`` best rotations), scored from the same correlations as the search
    around ``start`` where one grid holds the shifts of all (:class:`SearchGrid`; else on a grid of its
    own, :data:`JOINT_MAX_GROWTH`). ``prepared``: a dict kept across searches of the same images (their
    smoothed feature images are computed once per grid spacing; None: nothing kept). Returns the
    (score, moving_to_fixed) candidates of all the searches, best first."""
    grid_mm = float(params.search_grid_mm)
    coarse_mm = float(params.search_coarse_grid_mm or grid_mm)
    keep = int(params.search_keep or 0)
    shift_mm = float(params.search_shift_mm)
    c_mov = geometry.apply(start, moving.center_world()[None])[0]
    rots = rotation_lattice(float(params.search_rot_deg), float(params.search_rot_step_deg), params.search_lattice)
    starts = [about(rotvec_matrix(rv), c_mov) @ start for rv in rots]
    offsets = [np.zeros(3)] + [np.asarray(o, dtype=np.float64).reshape(3) for o in offsets]
    n_win = len(offsets)
    two_stage = coarse_mm > grid_mm and 0 < keep < len(starts)
    n_report = len(starts) + (min(len(starts), keep * n_win) if two_stage else 0)
    feature = params.search_feature
    features = {} if prepared is None else prepared
    stages: dict = {}

    def images(stage_mm: float):
        """The fixed and moving feature images of a stage (pose-independent)."""
        fixed_smooth = smooth_for(Volume(fix, fixed.affine), stage_mm)
        mov_t, shrunk = moving_for_search(mov, moving, stage_mm)
        if feature == "gradmag":
            fixed_smooth = gradient_magnitude(fixed_smooth, fixed.spacing)
            mov_t = torch.from_numpy(gradient_magnitude(mov_t[0, 0].numpy(), shrunk.spacing))[None, None]
        return fixed_smooth, mov_t, shrunk

    def prepare(stage_mm: float):
        """The stage's grid, whether it holds every window (else it holds the first one only, and the
        other windows' poses are scored on it translated), and the stage's resampled moving image."""
        key = (stage_mm, feature)
        if key not in features:
            features[key] = images(stage_mm)
        fixed_smooth, mov_t, shrunk = features[key]
        along = np.stack(offsets) @ fixed.direction
        joint = n_win == 1 or np.prod(_grid_box(fixed, stage_mm, shift_mm, along)[1]) <= \
            JOINT_MAX_GROWTH * np.prod(_grid_box(fixed, stage_mm, shift_mm, np.zeros((1, 3)))[1])
        grid = SearchGrid(fixed_smooth, fixed, fixed_mask, stage_mm, shift_mm, offsets if joint else None)
        return grid, joint, mov_t, shrunk

    def run_stage(stage_mm: float, wanted: list, done: int) -> list:
        """Scores the rotations ``wanted[k]`` (indices into ``starts``) of each window k: per window, a
        dict rotation index -> (score, moving_to_fixed)."""
        if stage_mm not in stages:
            stages[stage_mm] = prepare(stage_mm)
        grid, joint, mov_t, shrunk = stages[stage_mm]
        # the jobs: (rotation index, pose scored, the windows to read: (window k, the grid's window))
        if joint:
            sets = [set(w) for w in wanted]
            jobs = [(i, starts[i], [(k, k) for k in range(n_win) if i in sets[k]]) for i in sorted(set().union(*sets))]
        else:
            jobs = []
            for k in range(n_win):
                translate = np.eye(4)
                translate[:3, 3] = offsets[k]
                jobs += [(i, translate @ starts[i], [(k, 0)]) for i in wanted[k]]
        out = [dict() for _ in range(n_win)]

        def take(job, per_window):
            for k, w in job[2]:
                out[k][job[0]] = per_window[w]

        if cr_edges is not None and feature == "intensity":
            for n, job in enumerate(jobs):
                take(job, grid.score_cr_windows(mov_t, shrunk, job[1], cr_edges))
                report(progress, "register", done + n + 1, n_report + 4)
            return out
        # NCC: the rotations in batches of about _BATCH_VOXELS grid voxels (bounded memory)
        per = max(1, _BATCH_VOXELS // int(np.prod(grid.shape)))
        for n in range(0, len(jobs), per):
            chunk = jobs[n:n + per]
            for job, per_window in zip(chunk, grid.score_windows(mov_t, shrunk, [j[1] for j in chunk])):
                take(job, per_window)
            report(progress, "register", done + n + len(chunk), n_report + 4)
        return out

    everything = list(range(len(starts)))
    if two_stage:
        coarse = run_stage(coarse_mm, [everything] * n_win, 0)
        # per window, its best rotations on the coarse grid (ties: the smaller rotation first)
        kept = [sorted(everything, key=lambda i, k=k: -coarse[k][i][0])[:keep] for k in range(n_win)]
        fine = run_stage(grid_mm, kept, len(starts))
        searches = [[fine[k][i] for i in kept[k]] for k in range(n_win)]
    else:
        scored = run_stage(grid_mm, [everything] * n_win, 0)
        searches = [[scored[k][i] for i in everything] for k in range(n_win)]
    cands = []
    for found in searches:      # each search's candidates best first, then all of them pooled
        cands += sorted(found, key=lambda c: -c[0])
    cands.sort(key=lambda c: -c[0])
    return cands


def distinct(cands, k: int, min_mm: float = 6.0, min_deg: float = 5.0):
    """The ``k`` best candidates that differ from each other by at least ``min_mm`` or ``min_deg``."""
    out = []
    for s, found in cands:
        if not np.isfinite(s):
            continue
        if all(not (np.linalg.norm(found[:3, 3] - other[:3, 3]) < min_mm and
                    geometry.rotation_angle_deg(found @ np.linalg.inv(other)) < min_deg) for _, other in out):
            out.append((s, found))
        if len(out) >= k:
            break
    return out or cands[:1]

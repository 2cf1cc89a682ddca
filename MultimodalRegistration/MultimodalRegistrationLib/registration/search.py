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


def rotation_lattice(radius_deg: float, step_deg: float) -> list[np.ndarray]:
    """Rotation vectors (radians) on a cubic lattice of ``step_deg`` within ``radius_deg``, smallest first."""
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


def _rfft(a):
    return sfft.rfftn(a, workers=1)


def _rfft_many(a):
    """The 3-D real FFT of each volume of a stack (n, I, J, K)."""
    return sfft.rfftn(a, axes=(-3, -2, -1), workers=1)


class SearchGrid:
    """The fixed side of the masked-NCC FFT search (Padfield 2012) on an isotropic grid of ``grid_mm``
    aligned with the fixed stack and padded by the shift range ``shift_mm`` (FFT-friendly sizes, float32)."""

    def __init__(self, fixed_smooth: np.ndarray, fixed: Volume, fixed_mask: np.ndarray, grid_mm: float,
                 shift_mm: float):
        direction = fixed.direction
        corners = np.array([[i, j, k] for i in (0, fixed.shape[0] - 1) for j in (0, fixed.shape[1] - 1)
                            for k in (0, fixed.shape[2] - 1)], dtype=np.float64)
        along = fixed.voxel_to_world(corners) @ direction          # coordinates along the fixed axes
        lo = along.min(0) - shift_mm - grid_mm
        hi = along.max(0) + shift_mm + grid_mm
        self.shape = tuple(int(sfft.next_fast_len(int(np.ceil((h - l) / grid_mm)) + 1, real=True))
                           for l, h in zip(lo, hi))
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
        shifts = [np.fft.fftfreq(n, 1.0 / n) for n in self.shape]   # signed integer shifts per index
        self.sx, self.sy, self.sz = np.meshgrid(*shifts, indexing="ij", sparse=True)
        in_range = ((np.abs(self.sx) * grid_mm <= shift_mm) & (np.abs(self.sy) * grid_mm <= shift_mm)
                    & (np.abs(self.sz) * grid_mm <= shift_mm))
        self.in_range = np.broadcast_to(in_range, self.shape)     # the shifts within shift_mm, per grid voxel
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
        # only the points inside are sampled (a thick-slice coronal slab covers some 5-20% of the grid)
        grid = torch.stack([x[inside] for x in coords], dim=-1)
        v = torch.zeros(inside.shape, dtype=mov_t.dtype)
        v[inside] = F.grid_sample(mov_t, grid.reshape(1, -1, 1, 1, 3), mode="bilinear",
                                  padding_mode="border", align_corners=True).reshape(-1)
        return v.numpy(), inside.numpy()

    def _best(self, score: np.ndarray, overlap: np.ndarray, rotated: np.ndarray) -> tuple[float, np.ndarray]:
        return self._best_many(score[None], overlap[None], [rotated])[0]

    def _best_many(self, score: np.ndarray, overlap: np.ndarray, rotated: list) -> list:
        # a candidate must overlap at least half as much as the best-overlapping shift (a thin coronal
        # slab may overlap only a small part of the head; tiny overlaps give meaningless scores)
        n = len(rotated)
        best_overlap = np.where(self.in_range[None], overlap, -np.inf).reshape(n, -1).max(axis=1)
        min_n = np.maximum(0.5 * best_overlap, 50.0 * (6.0 / self.grid_mm) ** 3)
        score = np.where((overlap < min_n[:, None, None, None]) | ~self.in_range[None], -np.inf, score)
        flat = np.argmax(score.reshape(n, -1), axis=1)
        out = []
        for r, (f, rot) in enumerate(zip(flat, rotated)):
            idx = np.unravel_index(int(f), self.shape)
            t = np.array([self.sx.ravel()[idx[0]], self.sy.ravel()[idx[1]], self.sz.ravel()[idx[2]]]) * self.grid_mm
            shift = np.eye(4)
            shift[:3, 3] = self.direction @ t
            out.append((float(score[(r,) + idx]), shift @ rot))
        return out

    def score_cr(self, mov_t, moving: Volume, rotated: np.ndarray, edges: np.ndarray) -> tuple[float, np.ndarray]:
        """Best correlation ratio (Roche et al. 1998) of the fixed intensities given the moving intensity
        bin, over all shifts within ``shift_mm``, for the rotation ``rotated``: (cr, moving_to_fixed).

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
        return self._best(cr, overlap, rotated)

    def score(self, mov_t, moving: Volume, rotated: np.ndarray) -> tuple[float, np.ndarray]:
        """Best masked NCC over all shifts within ``shift_mm`` for the rotation ``rotated``: (ncc, moving_to_fixed)."""
        return self.score_many(mov_t, moving, [rotated])[0]

    def score_many(self, mov_t, moving: Volume, rotated: list) -> list:
        """:meth:`score` for several rotations at once: one sampling call and one batch of FFTs for all of
        them (the per-rotation work is small; one call each would mostly cost call overhead)."""
        moving_on_grid, moving_inside = self.sample_moving_many(mov_t, moving, rotated)
        inside_f = moving_inside.astype(np.float32)
        fft_mov = np.conj(_rfft_many(moving_on_grid))
        fft_mov_sq = np.conj(_rfft_many(moving_on_grid * moving_on_grid))
        fft_inside = np.conj(_rfft_many(inside_f))
        overlap = self._irfft_many(self.fft_mask * fft_inside)
        s1 = self._irfft_many(self.fft_fixed * fft_inside)
        s2 = self._irfft_many(self.fft_mask * fft_mov)
        s11 = self._irfft_many(self.fft_fixed_sq * fft_inside)
        s22 = self._irfft_many(self.fft_mask * fft_mov_sq)
        s12 = self._irfft_many(self.fft_fixed * fft_mov)
        n_safe = np.maximum(overlap, 1.0)
        num = s12 - s1 * s2 / n_safe
        den = (s11 - s1 * s1 / n_safe) * (s22 - s2 * s2 / n_safe)
        ncc = num / np.sqrt(np.maximum(den, 1e-6))
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
               prepared: dict | None = None) -> list[tuple[float, np.ndarray]]:
    """Global search around ``start``: masked NCC over every translation within ``search_shift_mm`` (FFT)
    (the correlation ratio on moving-intensity bins ``cr_edges`` instead, when given and the search
    feature is the intensity) for each rotation of a lattice. Coarse to fine: every rotation is scored
    on a ``search_coarse_grid_mm`` grid, the ``search_keep`` best again on the ``search_grid_mm`` grid.
    ``params``: :class:`~.params.SearchNccParams`. ``prepared``: a dict that keeps each stage's grid and
    resampled moving image, for another search of the same images from another start (the two
    depend on the images and the stage only). Returns (score, moving_to_fixed) candidates, best first."""
    grid_mm = float(params.search_grid_mm)
    coarse_mm = float(params.search_coarse_grid_mm or grid_mm)
    keep = int(params.search_keep or 0)
    shift_mm = float(params.search_shift_mm)
    c_mov = geometry.apply(start, moving.center_world()[None])[0]
    rots = rotation_lattice(float(params.search_rot_deg), float(params.search_rot_step_deg))
    starts = [about(rotvec_matrix(rv), c_mov) @ start for rv in rots]
    two_stage = coarse_mm > grid_mm and 0 < keep < len(starts)
    n_report = len(starts) + (keep if two_stage else 0)
    feature = params.search_feature

    def prepare(stage_mm: float):
        fixed_smooth = smooth_for(Volume(fix, fixed.affine), stage_mm)
        mov_t, shrunk = moving_for_search(mov, moving, stage_mm)
        if feature == "gradmag":
            fixed_smooth = gradient_magnitude(fixed_smooth, fixed.spacing)
            mov_t = torch.from_numpy(gradient_magnitude(mov_t[0, 0].numpy(), shrunk.spacing))[None, None]
        return SearchGrid(fixed_smooth, fixed, fixed_mask, stage_mm, shift_mm), mov_t, shrunk

    stages = {} if prepared is None else prepared

    def run_stage(stage_mm: float, rotated_starts: list, done: int):
        if stage_mm not in stages:
            stages[stage_mm] = prepare(stage_mm)
        grid, mov_t, shrunk = stages[stage_mm]
        out = []
        if cr_edges is not None and feature == "intensity":
            for i, rotated in enumerate(rotated_starts):
                value, found = grid.score_cr(mov_t, shrunk, rotated, cr_edges)
                out.append((value, found, rotated))
                report(progress, "register", done + i + 1, n_report + 4)
            return out
        # NCC: the rotations in batches of about _BATCH_VOXELS grid voxels (bounded memory)
        per = max(1, _BATCH_VOXELS // int(np.prod(grid.shape)))
        for i in range(0, len(rotated_starts), per):
            chunk = rotated_starts[i:i + per]
            for (value, found), rotated in zip(grid.score_many(mov_t, shrunk, chunk), chunk):
                out.append((value, found, rotated))
            report(progress, "register", done + i + len(chunk), n_report + 4)
        return out

    if two_stage:
        coarse = run_stage(coarse_mm, starts, 0)
        coarse.sort(key=lambda c: -c[0])
        fine = run_stage(grid_mm, [c[2] for c in coarse[:keep]], len(starts))
        cands = [(s, found) for s, found, _ in fine]
    else:
        cands = [(s, found) for s, found, _ in run_stage(grid_mm, starts, 0)]
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

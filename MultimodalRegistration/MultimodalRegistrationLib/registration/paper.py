"""``--method paper``: the paper's method, faithfully (Sec. 3.5): slice-axis interpolation, subsets of
re-sliced coronal rows one axial spacing apart, pruning, centre initialisation, greedy nudges of
+-lr_i pixels / +-1 degree with the decaying step ``lr_i = lr_0 / (1 + i / n)`` (Eq. 1), MSE, best
subset by the lowest mean MSE. Vectorised over subsets and probes (torch).

Slice-axis interpolation and subset enumeration (paper Sec. 3.5.1-3.5.2); how the paper's words map
onto arrays here (see docs/REGISTRATION.md):

* **Interpolation** (3.5.1): the converted coronal stack C'T2 is interpolated *along its slice
  axis* (the thick one, ~A) to the fixed stack's spacing along that same anatomical direction
  (for a coronal-vs-axial pair: the axial in-plane spacing along A). :func:`interpolate_slice_axis`.
* **Subsets** (3.5.2): the axial slices are ~S-normal planes ``slice_mm`` apart. The interpolated
  coronal volume is re-sliced in the axial direction: its rows along the coronal in-plane axis that
  points ~S are axial-oriented planes ``row_mm`` apart. A subset is the set of ``n`` rows
  ``start, start + skip, ..., start + (n - 1) * skip`` with ``skip = round(slice_mm / row_mm)``
  (one row per axial slice), enumerated for every ``start`` from the first row to the end of the
  stack (~ one subset per row: about 500 on a real 0.4 mm coronal stack; they overlap).
* **Pruning**: a subset whose slab would run past the end of the coronal stack cannot cover the
  axial field of view (some axial slices would have no coronal slice), so it is removed. With an
  axial slab about half as tall as the coronal field of view this removes about half of them, as
  the paper reports. :func:`enumerate_subsets` returns both lists.

The voxel placement of a subset (which moving voxel a fixed pixel of a subset's slice samples, for
given in-plane moves, rotation and tilts) is :class:`SubsetPlacement`, used by both MSE evaluations
and by the conversion of the result into a world transform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import geometry
from ..device import resolve_device
from ..errors import RegistrationError
from ..progress import report
from ..volume import Volume, slice_axis
from .images import robust_scale
from .params import PaperParams
from .pyramid import shrink_inplane, smooth_for
from .result import RegistrationResult


def axis_correspondence(moving: Volume, fixed: Volume) -> tuple[np.ndarray, np.ndarray]:
    """For each voxel axis of ``fixed``: the voxel axis of ``moving`` pointing closest to the same
    anatomical direction, and the sign (+1/-1) relating them (direction cosines only; positions in
    the headers are not used)."""
    cos = fixed.direction.T @ moving.direction           # [fixed axis, moving axis]
    perm = np.full(3, -1)
    signs = np.ones(3)
    used: set[int] = set()
    for a in np.argsort(-np.abs(cos).max(axis=1)):       # most decisive fixed axis first
        order = np.argsort(-np.abs(cos[a]))
        b = next(int(b) for b in order if int(b) not in used)
        used.add(b)
        perm[a] = b
        signs[a] = 1.0 if cos[a, b] >= 0 else -1.0
    return perm, signs


def interpolate_slice_axis(vol: Volume, spacing_mm: float, axis: int | None = None, order: int = 1) -> Volume:
    """``vol`` resampled along one voxel axis (default: its slice axis) to ``spacing_mm``.

    The first and last samples sit on the first and last original slice centres' span; the other
    axes are untouched. Linear interpolation (``order=1``) as the paper's default.
    """
    axis = slice_axis(vol) if axis is None else int(axis)
    sp = float(vol.spacing[axis])
    if spacing_mm <= 0:
        raise ValueError("spacing_mm must be positive")
    n = vol.shape[axis]
    extent = (n - 1) * sp
    n_new = int(np.floor(extent / spacing_mm + 1e-6)) + 1
    coords = np.arange(n_new) * (spacing_mm / sp)          # positions in old index units
    arr = np.asarray(vol.array, dtype=np.float32)
    if order == 1:
        lo = np.clip(np.floor(coords).astype(int), 0, max(n - 2, 0))
        w = (coords - lo).astype(np.float32)
        a0 = np.take(arr, lo, axis=axis)
        a1 = np.take(arr, np.minimum(lo + 1, n - 1), axis=axis)
        shape = [1, 1, 1]
        shape[axis] = n_new
        w = w.reshape(shape)
        out = a0 * (1 - w) + a1 * w
    else:
        out = ndimage.map_coordinates(arr, _full_coords(arr.shape, axis, coords), order=order, mode="nearest")
    aff = vol.affine.copy()
    aff[:3, axis] = vol.affine[:3, axis] * (spacing_mm / sp)
    return Volume(out.astype(np.float32, copy=False), aff)


def _full_coords(shape, axis, coords):
    grids = [np.arange(s, dtype=np.float64) for s in shape]
    grids[axis] = coords
    return np.stack(np.meshgrid(*grids, indexing="ij"), axis=0)


@dataclass
class SubsetPlan:
    """Subsets of re-sliced coronal rows, one row per fixed (axial) slice."""

    row_axis: int            # voxel axis of the (interpolated) moving volume pointing ~ along the fixed slice normal
    row_mm: float            # spacing of those rows
    skip: int                # rows between consecutive slices of a subset
    n_slices: int            # slices per subset (= number of fixed slices)
    starts: np.ndarray       # first row of every enumerated subset (all rows: 0 .. n_rows-1)
    kept: np.ndarray         # bool per enumerated subset: True if it covers the fixed field of view
    row_sign: float = 1.0    # +1 if increasing row index goes the way of increasing fixed slice index

    @property
    def n_enumerated(self) -> int:
        return int(len(self.starts))

    @property
    def kept_starts(self) -> np.ndarray:
        return self.starts[self.kept]

    def rows(self, start: int) -> np.ndarray:
        """Rows of the subset starting at ``start`` (in fixed slice order k = 0 .. n-1)."""
        return int(start) + self.skip * np.arange(self.n_slices)


def enumerate_subsets(n_rows: int, row_mm: float, slice_mm: float, n_slices: int,
                      row_axis: int = 1, row_sign: float = 1.0) -> SubsetPlan:
    """Every subset of rows ``skip = round(slice_mm / row_mm)`` apart, one per starting row, and
    the pruning of those that would leave part of the fixed slab without a coronal slice."""
    if n_rows < 1 or n_slices < 1:
        raise RegistrationError("nothing to enumerate: empty stack")
    skip = max(1, int(round(slice_mm / row_mm)))
    starts = np.arange(n_rows)
    kept = starts + (n_slices - 1) * skip <= n_rows - 1
    if not kept.any():
        raise RegistrationError(
            f"no subset of the coronal stack covers the axial field of view: {n_slices} axial slices of "
            f"{slice_mm:.2f} mm span {(n_slices - 1) * slice_mm:.1f} mm but the coronal stack spans only "
            f"{(n_rows - 1) * row_mm:.1f} mm along the axial slice normal")
    return SubsetPlan(row_axis=int(row_axis), row_mm=float(row_mm), skip=skip, n_slices=int(n_slices),
                      starts=starts, kept=kept, row_sign=float(row_sign))


def plan_for(moving_interp: Volume, fixed: Volume) -> SubsetPlan:
    """The :class:`SubsetPlan` of an interpolated coronal volume against an axial stack."""
    perm, signs = axis_correspondence(moving_interp, fixed)
    kf = slice_axis(fixed)
    row_axis = int(perm[kf])
    return enumerate_subsets(moving_interp.shape[row_axis], float(moving_interp.spacing[row_axis]),
                             float(fixed.spacing[kf]), fixed.shape[kf], row_axis=row_axis,
                             row_sign=float(signs[kf]))


# ----------------------------------------------------------------------------- the subset search

def _histogram_match(src: np.ndarray, ref: np.ndarray, src_mask: np.ndarray, ref_mask: np.ndarray) -> np.ndarray:
    """Quantile mapping of ``src`` onto ``ref`` computed over the masks (area with both modalities)."""
    qs = np.linspace(0, 100, 257)
    sq = np.percentile(src[src_mask], qs)
    rq = np.percentile(ref[ref_mask], qs)
    sq = np.maximum.accumulate(sq + np.arange(len(sq)) * 1e-9)
    return np.interp(src, sq, rq).astype(np.float32)


def _radians(deg):
    return deg * (math.pi / 180)


class SubsetPlacement:
    """Where a fixed pixel of a subset's slice samples the (interpolated) moving volume, in voxel units
    (the headers' positions unused: the centre initialisation of Sec. 3.5).

    Fixed pixel (u, v) of slice k -> mm offsets from the fixed slice centre along the fixed in-plane
    axes, moved by (tu, tv) working pixels and rotated by theta about the slice normal -> the matching
    moving axes (by direction cosines), centred on the moving in-plane centre; fixed slice k -> moving
    row ``start + k * skip`` (the row direction following the fixed slice axis), tilted by the angles
    (a, b) about the U and V axes. Every operation works on Python/numpy scalars and torch tensors alike,
    so the two MSE evaluations and the world transform share this one copy."""

    def __init__(self, plan: SubsetPlan, fine: Volume, fixed_level: Volume, kf: int, inplane, m_axes, m_sign,
                 pix: float):
        self.plan = plan
        self.kf, self.inplane, self.m_axes, self.m_sign, self.pix = kf, list(inplane), m_axes, m_sign, pix
        self.n_slices = fixed_level.shape[kf]
        self.pixel_mm = fixed_level.spacing
        self.moving_mm = fine.spacing
        self.pixel_centre = ((fixed_level.shape[self.inplane[0]] - 1) / 2.0,
                             (fixed_level.shape[self.inplane[1]] - 1) / 2.0)
        self.moving_centre = (np.asarray(fine.shape, dtype=np.float64) - 1) / 2.0

    def offsets_mm(self, u, v):
        """Fixed pixel indices (u, v) -> mm from the slice centre along the fixed in-plane axes."""
        return ((u - self.pixel_centre[0]) * self.pixel_mm[self.inplane[0]],
                (v - self.pixel_centre[1]) * self.pixel_mm[self.inplane[1]])

    def rotate(self, du, dv, tu, tv, cos_theta, sin_theta):
        """Offsets (mm) moved back by (tu, tv) working pixels and rotated by -theta: (u1, v1) in mm."""
        u0 = du - tu * self.pix
        v0 = dv - tv * self.pix
        return cos_theta * u0 + sin_theta * v0, -sin_theta * u0 + cos_theta * v0

    def row(self, start, k):
        """The moving row that fixed slice ``k`` samples in the subset starting at row ``start``."""
        if self.plan.row_sign >= 0:
            return start + self.plan.skip * k
        return start + self.plan.skip * (self.n_slices - 1 - k)

    def tilt_rows(self, u1, v1, tan_a, tan_b):
        """Through-plane row offset of the tilts: linear in the in-plane position."""
        return (tan_a * v1 - tan_b * u1) / self.plan.row_mm * self.plan.row_sign

    def moving_index(self, j: int, w):
        """Rotated offset ``w`` (mm) along fixed in-plane axis ``j`` (0: U, 1: V) -> moving voxel index."""
        axis = self.m_axes[j]
        return self.moving_centre[axis] + self.m_sign[j] * w / self.moving_mm[axis]

    def voxel(self, start: int, prm, k: float, u: float, v: float) -> np.ndarray:
        """The moving voxel (3,) of fixed slice k, pixel (u, v) for the subset ``start`` and ``prm``."""
        th = math.radians(prm[2])
        u1, v1 = self.rotate(*self.offsets_mm(u, v), prm[0], prm[1], math.cos(th), math.sin(th))
        out = np.zeros(3)
        out[self.plan.row_axis] = self.row(start, k) + self.tilt_rows(
            u1, v1, math.tan(math.radians(prm[3])), math.tan(math.radians(prm[4])))
        out[self.m_axes[0]] = self.moving_index(0, u1)
        out[self.m_axes[1]] = self.moving_index(1, v1)
        return out

    def world_transform(self, start: int, prm, fine: Volume, fixed_level: Volume, fixed: Volume) -> np.ndarray:
        """World (RAS) moving->fixed matrix equivalent to the voxel placement of subset ``start``."""
        # the fixed-voxel (level grid) -> fine-moving-voxel affine map from three sample points + origin
        corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
        placed = np.array([self.voxel(start, prm, q[self.kf], q[self.inplane[0]], q[self.inplane[1]])
                           for q in corners])
        voxel_map = np.eye(4)                                  # fixed-level voxel -> fine moving voxel
        voxel_map[:3, 3] = placed[0]
        for a in range(3):
            voxel_map[:3, a] = placed[a + 1] - placed[0]
        fixed_to_moving_world = fine.affine @ voxel_map @ np.linalg.inv(fixed_level.affine)
        approx = np.linalg.inv(fixed_to_moving_world)
        # the voxel map is rigid in mm up to the (tiny) tilt shear; project onto the nearest rotation
        left, _, right_t = np.linalg.svd(approx[:3, :3])
        rotation = left @ right_t
        if np.linalg.det(rotation) < 0:
            rotation = left @ np.diag([1, 1, -1]) @ right_t
        centre = fixed.center_world()
        centre_moving = geometry.apply(np.linalg.inv(approx), centre[None])[0]
        out = np.eye(4)
        out[:3, :3] = rotation
        out[:3, 3] = centre - rotation @ centre_moving
        return out


def register_paper(moving: Volume, fixed: Volume, *, params: PaperParams | None = None, progress=None,
                   device: str = "cpu") -> RegistrationResult:
    """The paper's subset search (Sec. 3.5), vectorised. See the module docstring and docs."""
    p = params or PaperParams()
    dev = torch.device(resolve_device(device))

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
    stride = max(1, int(p.subset_stride))
    starts = plan.kept_starts[::stride]

    # --- fixed slices at the working pixel size, intensity normalisation
    fixed_scaled = Volume(np.asarray(fixed.array, dtype=np.float32), fixed.affine)
    fixed_scaled = fixed_scaled.with_array(fixed_scaled.array * (1000.0 / robust_scale(fixed_scaled.array)))
    pix = float(p.pixel_mm)
    fixed_level = shrink_inplane(fixed_scaled, pix)
    fix_arr = np.moveaxis(fixed_level.array, kf, 0)        # (K, U, V)
    inplane = [a for a in range(3) if a != kf]             # fixed in-plane axes, in (U, V) order
    mov_arr = np.asarray(fine.array, dtype=np.float32)
    lo_f, hi_f = float(np.percentile(fixed_scaled.array, 0.5)), float(np.percentile(fixed_scaled.array, 99.5))
    lo_m, hi_m = float(np.percentile(mov_arr, 0.5)), float(np.percentile(mov_arr, 99.5))
    mov_arr = (mov_arr - lo_m) / max(hi_m - lo_m, 1e-6) * (hi_f - lo_f) + lo_f   # "simple normalisation"
    if p.normalisation == "histogram":
        mov_arr = _histogram_match(mov_arr, fix_arr, mov_arr > lo_f + 0.05 * (hi_f - lo_f),
                                   fix_arr > lo_f + 0.05 * (hi_f - lo_f))
    mov_arr = smooth_for(fine.with_array(mov_arr), pix)
    mov_t = torch.from_numpy(np.ascontiguousarray(mov_arr))[None, None].to(dev)
    fix_t = torch.from_numpy(np.ascontiguousarray(fix_arr)).to(dev)
    n_slices, n_u, n_v = fix_arr.shape

    m_axes = [int(perm[a]) for a in inplane]               # moving axes for U and V
    m_sign = [float(signs[a]) for a in inplane]
    place = SubsetPlacement(plan, fine, fixed_level, kf, inplane, m_axes, m_sign, pix)
    uu, vv = np.meshgrid(np.arange(n_u), np.arange(n_v), indexing="ij")
    du_np, dv_np = place.offsets_mm(uu, vv)
    du = torch.from_numpy(du_np).to(dev)                    # mm
    dv = torch.from_numpy(dv_np).to(dev)
    kk = torch.arange(n_slices, dtype=torch.float64, device=dev)
    size = torch.tensor(fine.shape, dtype=torch.float64, device=dev)

    # rows of the fine volume laid side by side in one tall 2D image (one zero line between them), so
    # that in-plane-only moves sample with a coherent 2D bilinear lookup (much faster than 3D)
    rows_img = np.transpose(mov_arr, [plan.row_axis, m_axes[0], m_axes[1]])   # (Nr, H0, W0)
    n_rows, height, width = rows_img.shape
    tall = np.zeros((n_rows, height + 2, width), dtype=np.float32)
    tall[:, 1:-1] = rows_img
    tall_t = torch.from_numpy(tall.reshape(1, 1, n_rows * (height + 2), width)).to(dev)
    tall_height = n_rows * (height + 2)
    du32, dv32 = du.float(), dv.float()

    def mse_inplane(start_t, prm):
        """prm (B, 5) with no tilts (in-plane moves only): the 2D lookup in the tall image."""
        n_b = prm.shape[0]
        prm = prm.float()
        th = _radians(prm[:, 2])
        u1, v1 = place.rotate(du32[None], dv32[None], prm[:, 0, None, None], prm[:, 1, None, None],
                              torch.cos(th)[:, None, None], torch.sin(th)[:, None, None])
        along_u = place.moving_index(0, u1)                                    # (B, U, V)
        along_v = place.moving_index(1, v1)
        ok = ((along_u > -0.5) & (along_u < height - 0.5)).float()
        rows = place.row(start_t[:, None], kk[None, :]).float()               # (B, K)
        tall_y = rows[:, :, None, None] * (height + 2) + 1.0 + along_u[:, None]     # (B, K, U, V)
        tall_x = (along_v[:, None] * (2.0 / (width - 1)) - 1.0).expand(n_b, n_slices, n_u, n_v)
        grid = torch.stack([tall_x, tall_y * (2.0 / (tall_height - 1)) - 1.0], dim=-1).reshape(1, n_b * n_slices * n_u, n_v, 2)
        vals = F.grid_sample(tall_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        vals = vals.reshape(n_b, n_slices, n_u, n_v) * ok[:, None]
        err = (vals - fix_t[None].float()) ** 2
        return err.mean(dim=(2, 3)).mean(dim=1).double()

    def mse_tilted(start_t, prm):
        """prm (B, 5): tu, tv (working pixels), theta (deg, about the slice normal), a, b (deg, tilts
        about the U and V axes). Returns per-subset mean over slices of the per-slice MSE (B,)."""
        n_b = prm.shape[0]
        th = _radians(prm[:, 2])
        u1, v1 = place.rotate(du[None, None], dv[None, None], prm[:, 0, None, None, None],
                              prm[:, 1, None, None, None], torch.cos(th)[:, None, None, None],
                              torch.sin(th)[:, None, None, None])
        rows = place.row(start_t[:, None], kk[None, :])[:, :, None, None].expand(n_b, n_slices, n_u, n_v)
        rows = rows + place.tilt_rows(u1, v1, torch.tan(_radians(prm[:, 3]))[:, None, None, None],
                                      torch.tan(_radians(prm[:, 4]))[:, None, None, None])
        coords = [None, None, None]
        coords[plan.row_axis] = rows
        coords[m_axes[0]] = place.moving_index(0, u1.expand(n_b, n_slices, n_u, n_v))
        coords[m_axes[1]] = place.moving_index(1, v1.expand(n_b, n_slices, n_u, n_v))
        vox = torch.stack(coords, dim=-1)
        norm = 2.0 * vox / (size - 1.0) - 1.0
        grid = norm[..., [2, 1, 0]].to(mov_t.dtype).reshape(1, n_b * n_slices, n_u, n_v, 3)
        vals = F.grid_sample(mov_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        vals = vals.reshape(n_b, n_slices, n_u, n_v)
        err = (vals - fix_t[None]) ** 2
        return err.mean(dim=(2, 3)).mean(dim=1)

    n_iter = int(p.n_iter)
    lr0 = float(p.lr0)
    rstep = float(p.rot_step_deg)
    n_dof = 5 if p.rotations == "all" else 3
    mse = mse_inplane if n_dof == 3 else mse_tilted
    probes = [np.zeros(5)]
    for d in range(n_dof):
        for s in (+1, -1):
            e = np.zeros(5)
            e[d] = s
            probes.append(e)
    probes = torch.from_numpy(np.stack(probes)).to(dev)    # (P, 5) unit moves
    n_probes = probes.shape[0]
    chunk = max(1, int(3e6 // max(1, n_probes * n_slices * n_u * n_v)))
    all_mse = np.full(len(starts), np.inf)
    all_prm = np.zeros((len(starts), 5))
    total = int(math.ceil(len(starts) / chunk))
    with torch.no_grad():
        for ci in range(total):
            st_np = starts[ci * chunk:(ci + 1) * chunk].astype(np.float64)
            n_b = len(st_np)
            st_t = torch.from_numpy(st_np).to(dev)
            prm = torch.zeros(n_b, 5, dtype=torch.float64, device=dev)
            cur = None
            for i in range(n_iter):
                lr_i = lr0 / (1.0 + i / n_iter)                       # Eq. 1
                scale = torch.tensor([lr_i, lr_i, rstep, rstep, rstep], dtype=torch.float64, device=dev)
                cand = prm[:, None, :] + probes[None] * scale[None, None]   # (B, P, 5)
                probe_mse = mse(st_t.repeat_interleave(n_probes), cand.reshape(n_b * n_probes, 5))
                probe_mse = probe_mse.reshape(n_b, n_probes)
                best = torch.argmin(probe_mse, dim=1)
                prm = cand[torch.arange(n_b), best]
                cur = probe_mse[torch.arange(n_b), best]
            all_mse[ci * chunk: ci * chunk + n_b] = cur.cpu().numpy()
            all_prm[ci * chunk: ci * chunk + n_b] = prm.cpu().numpy()
            report(progress, "register", ci + 1, total)
    best_subset = int(np.argmin(all_mse))
    start, prm = int(starts[best_subset]), all_prm[best_subset]

    # --- the chosen voxel map as a world transform: moving(fine) voxel -> fixed voxel, then affines
    moving_to_fixed = place.world_transform(start, prm, fine, fixed_level, fixed)
    thr = float(p.success_mse)
    best_mse = float(all_mse[best_subset])
    curve = np.full(plan.n_enumerated, np.nan)
    idx_kept = np.flatnonzero(plan.kept)[::stride]
    curve[idx_kept] = all_mse
    details = {"n_subsets_enumerated": plan.n_enumerated, "n_subsets_kept": int(plan.kept.sum()),
               "n_subsets_evaluated": int(len(starts)), "skip_rows": plan.skip, "row_mm": plan.row_mm,
               "best_start_row": start, "params_px_deg": [float(v) for v in prm],
               "lr_schedule": "lr_i = lr_0 / (1 + i / n)", "lr0": lr0, "n_iter": n_iter,
               "pixel_mm": pix, "normalisation": p.normalisation, "success_threshold_mse": thr,
               "subset_metrics_kept_only": [float(v) for v in all_mse]}
    return RegistrationResult(moving_to_fixed=moving_to_fixed, method="paper", metric=best_mse,
                              success=bool(best_mse <= thr), subset_index=int(idx_kept[best_subset]),
                              subset_metrics=[None if not np.isfinite(v) else float(v) for v in curve],
                              details=details)

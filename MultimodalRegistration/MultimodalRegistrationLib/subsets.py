"""Slice-axis interpolation and subset enumeration (paper Sec. 3.5.1-3.5.2).

How the paper's words map onto arrays here (see docs/REGISTRATION.md):

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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import RegistrationError
from .volume import Volume, slice_axis


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

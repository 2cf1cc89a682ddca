"""Resolution pyramid of thick stacks: in-plane block averaging and anti-aliasing.

A thick stack is never shrunk along its slice axis (NOTES.md: shrinking the thick axis destroys it):
:func:`inplane_factors` is the one place that decides the per-axis factors, for our engine's levels
and for the ITK toolkits' pyramid schedules alike.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..volume import Volume, slice_axis


def inplane_factors(vol: Volume, level_mm: float) -> list[int]:
    """Per voxel axis (i, j, k): the in-plane shrink factors that bring ``vol`` to about ``level_mm``;
    1 along the slice axis."""
    k = slice_axis(vol)
    return [1 if a == k else max(1, int(round(level_mm / vol.spacing[a]))) for a in range(3)]


def block_mean(vol: Volume, factors) -> Volume:
    """Averages blocks of ``factors`` voxels (crop to multiples); the affine follows the block centres."""
    f = [max(1, int(x)) for x in factors]
    arr = np.asarray(vol.array, dtype=np.float32)
    if f == [1, 1, 1]:
        return Volume(arr, vol.affine.copy())
    n = [max(1, s // fi) for s, fi in zip(arr.shape, f)]
    f = [min(fi, s) for fi, s in zip(f, arr.shape)]
    blocks = arr[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    blocks = blocks.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))
    aff = vol.affine.copy()
    aff[:3, :3] = vol.affine[:3, :3] * np.asarray(f, dtype=np.float64)
    aff[:3, 3] = vol.affine[:3, :3] @ ((np.asarray(f, dtype=np.float64) - 1) / 2) + vol.affine[:3, 3]
    return Volume(blocks, aff)


def shrink_inplane(vol: Volume, level_mm: float) -> Volume:
    """``vol`` block-averaged in-plane to about ``level_mm`` (the slice axis untouched)."""
    return block_mean(vol, inplane_factors(vol, level_mm))


def smooth_for(vol: Volume, target_mm: float) -> np.ndarray:
    """Gaussian anti-aliasing of ``vol`` before sampling it at ``target_mm`` (per axis, in mm)."""
    sigmas = [math.sqrt(max(0.0, (0.42 * target_mm) ** 2 - (0.42 * s) ** 2)) / s for s in vol.spacing]
    arr = np.asarray(vol.array, dtype=np.float32)
    if max(sigmas) < 0.3:
        return arr
    return ndimage.gaussian_filter(arr, sigmas, mode="nearest").astype(np.float32)

"""Intensity helpers shared by the methods: robust scaling, signal masks, gradients, centroids."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..volume import Volume


def _percentile_of_positive(a: np.ndarray, q: float) -> float | None:
    """``np.percentile(a[a > 0], q)`` (linear interpolation, the same float32 arithmetic), found among the
    largest values only: the two order statistics it interpolates lie above a threshold read from a
    regular subsample, so only the values above it are partitioned instead of a copy of all positive
    voxels. None when the subsample's threshold does not hold them (the caller then uses numpy)."""
    flat = a.ravel(order="K")                   # a view of a C- or Fortran-ordered array
    n = int(np.count_nonzero(flat > 0))
    if n < 20000:
        return None
    h = (n - 1) * (q / 100.0)                   # numpy's virtual index (linear method)
    below = int(np.floor(h))
    above = min(below + 1, n - 1)
    gamma = h - below
    need = n - below                            # the values from the lower order statistic up
    sub = flat[:: max(1, flat.size // 50000)]
    sub = sub[sub > 0]
    if not sub.size:
        return None
    # a threshold with about twice the needed share of the values above it (and at least 1000 more)
    share = min(1.0, 2.0 * need / n + 1000.0 / n)
    if share >= 0.5:
        return None
    t = float(np.quantile(sub, 1.0 - share))
    if not t > 0:
        return None
    top = flat[flat >= t]
    lo = below - (n - top.size)                 # the order statistics' ranks among the top values
    if lo < 0:
        return None
    top.partition([lo, lo + (above - below)])
    a_lo, a_hi = top[lo], top[lo + (above - below)]
    diff = a_hi - a_lo
    return float(a_hi - diff * (1 - gamma)) if gamma >= 0.5 else float(a_lo + diff * gamma)


def robust_scale(arr: np.ndarray, q: float = 99.0) -> float:
    """The ``q``-th percentile of the positive voxels (1.0 when that is not positive)."""
    a = np.asarray(arr, dtype=np.float32)
    s = _percentile_of_positive(a, float(q))
    if s is None:
        pos = a[a > 0]
        s = float(np.percentile(pos, q)) if pos.size else float(np.abs(a).max())
    return s if s > 0 else 1.0


def normalised(vol: Volume) -> Volume:
    """``vol`` divided by its robust maximum (float32)."""
    a = np.asarray(vol.array, dtype=np.float32)
    return vol.with_array(a / robust_scale(a))


def gradient_magnitude(arr: np.ndarray, spacing) -> np.ndarray:
    """|grad arr| in intensity per mm (central differences along each voxel axis)."""
    g = [np.gradient(arr, axis=a) / float(spacing[a]) for a in range(3)]
    return np.sqrt(sum(x * x for x in g)).astype(np.float32)


def signal_mask(arr: np.ndarray, frac: float = 0.08, dilate: int = 2) -> np.ndarray:
    """Voxels above ``frac`` of the robust maximum, dilated ``dilate`` times."""
    mask = arr > frac * robust_scale(arr)
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    return mask


def center_init(moving: Volume, fixed: Volume) -> np.ndarray:
    """Translation placing the moving signal centroid on the fixed signal centroid (headers' rotations kept)."""
    def centroid(v):
        a = np.asarray(v.array, dtype=np.float32)
        m = a > 0.1 * robust_scale(a)
        ijk = np.argwhere(m).mean(axis=0) if m.any() else (np.asarray(a.shape) - 1) / 2
        return v.voxel_to_world(ijk[None])[0]
    shift = np.eye(4)
    shift[:3, 3] = centroid(fixed) - centroid(moving)
    return shift

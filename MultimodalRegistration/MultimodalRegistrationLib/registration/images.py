"""Intensity helpers shared by the methods: robust scaling, signal masks, gradients, centroids."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..volume import Volume


def robust_scale(arr: np.ndarray, q: float = 99.0) -> float:
    """The ``q``-th percentile of the positive voxels (1.0 when that is not positive)."""
    a = np.asarray(arr, dtype=np.float32)
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

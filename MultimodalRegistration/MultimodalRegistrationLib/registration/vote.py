"""A second, different similarity for search-cr's check: normalised mutual information.

The forward and backward correlation ratios are two directions of one metric; where a rescue or a second
pass made them agree (one direction restarted from the other's result, or both searched around one
start), their agreement is not an independent check. :class:`NmiScore` scores a pose by Studholme's
normalised mutual information ``(H(A) + H(B)) / H(A, B)`` of the ceT1 and the T2, a histogram
statistic that neither the search nor the refinement uses, and that Greedy's rigid mode optimises."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import geometry
from ..volume import Volume
from .images import robust_scale
from .pyramid import shrink_inplane


def _bin(values: np.ndarray, scale: float, bins: int) -> np.ndarray:
    return np.clip((values / scale * (bins - 1)).astype(np.int64), 0, bins - 1)


class NmiScore:
    """NMI of ``moving`` (on its own grid) against ``fixed`` (trilinear, zero outside its field of view)
    at a moving->fixed pose, both block-averaged in-plane to ``level_mm``.
    Every moving voxel counts, background included, so a pose that puts the head outline in the wrong
    place is penalised; ``bins`` intensity bins per image, clipped at the 99th percentile."""

    def __init__(self, moving: Volume, fixed: Volume, *, level_mm: float = 2.0, bins: int = 32):
        small = shrink_inplane(moving, level_mm)
        arr = np.asarray(small.array, dtype=np.float32)
        ijk = np.indices(arr.shape).reshape(3, -1).T.astype(np.float64)
        self.points = small.voxel_to_world(ijk)
        self.bins = int(bins)
        self.moving_bins = _bin(arr.ravel(), robust_scale(arr), self.bins)
        # the fixed stack block-averaged in-plane to the same level (its own anti-aliasing)
        self.fixed = shrink_inplane(fixed, level_mm)
        self.fixed_arr = np.asarray(self.fixed.array, dtype=np.float32)
        self.fixed_scale = robust_scale(self.fixed_arr)
        counts = np.bincount(self.moving_bins, minlength=self.bins).astype(np.float64)
        self.moving_entropy = _entropy(counts)

    def __call__(self, moving_to_fixed: np.ndarray) -> float:
        vox = self.fixed.world_to_voxel(geometry.apply(np.asarray(moving_to_fixed, dtype=np.float64), self.points))
        # a point a whole voxel or more outside the fixed stack has only outside neighbours: its value is the
        # constant 0 without interpolating (the points in between are interpolated as before)
        near = np.all((vox > -1.0) & (vox < np.asarray(self.fixed_arr.shape, dtype=np.float64)), axis=1)
        values = np.zeros(len(vox), dtype=self.fixed_arr.dtype)
        values[near] = ndimage.map_coordinates(self.fixed_arr, vox[near].T, order=1, mode="constant", cval=0.0)
        fb = _bin(values, self.fixed_scale, self.bins)
        joint = np.bincount(self.moving_bins * self.bins + fb, minlength=self.bins * self.bins).astype(np.float64)
        h_joint = _entropy(joint)
        h_fixed = _entropy(joint.reshape(self.bins, self.bins).sum(axis=0))
        return float((self.moving_entropy + h_fixed) / h_joint) if h_joint > 0 else float("nan")


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

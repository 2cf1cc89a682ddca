"""Label maps on their image's grid (Slicer-free; numpy imported lazily)."""
from __future__ import annotations

import math

from .results import box_corners_ras


def same_grid(shape_a, ijk_to_ras_a, shape_b, ijk_to_ras_b, tol_mm: float = 1e-3) -> bool:
    """Whether two volumes share a voxel grid: same dimensions and IJK-to-RAS matrices that place
    every voxel centre within ``tol_mm`` of the other's (checked at the corners)."""
    if tuple(int(s) for s in shape_a[:3]) != tuple(int(s) for s in shape_b[:3]):
        return False
    a = box_corners_ras(ijk_to_ras_a, shape_a)
    b = box_corners_ras(ijk_to_ras_b, shape_b)
    return all(math.dist(p, q) <= tol_mm for p, q in zip(a, b))


def resample_labels_nearest(labels_kji, labels_ijk_to_ras, reference_shape_ijk, reference_ijk_to_ras):
    """A label array (Slicer's KJI order) moved onto another grid by nearest neighbour.

    Both grids are taken in the same RAS frame (no transform between them); voxels of the
    reference grid outside the label grid get 0. Label values are kept as they are. Returns a KJI
    array of the reference shape with the labels' dtype."""
    import numpy as np

    src = np.asarray(labels_kji)
    ni, nj, nk = (int(s) for s in reference_shape_ijk[:3])
    ref_to_src = np.linalg.inv(np.asarray(labels_ijk_to_ras, dtype=float)) @ np.asarray(reference_ijk_to_ras, dtype=float)
    out = np.zeros((nk, nj, ni), dtype=src.dtype)
    sk, sj, si = src.shape
    jj, ii = np.meshgrid(np.arange(nj, dtype=float), np.arange(ni, dtype=float), indexing="ij")
    for k in range(nk):  # one reference slice at a time keeps the index arrays small
        pts = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, float(k)), np.ones(ii.size)])
        s_i, s_j, s_k = (np.rint(ref_to_src[r] @ pts).astype(np.int64) for r in range(3))
        inside = (s_i >= 0) & (s_i < si) & (s_j >= 0) & (s_j < sj) & (s_k >= 0) & (s_k < sk)
        plane = np.zeros(ii.size, dtype=src.dtype)
        plane[inside] = src[s_k[inside], s_j[inside], s_i[inside]]
        out[k] = plane.reshape(nj, ni)
    return out

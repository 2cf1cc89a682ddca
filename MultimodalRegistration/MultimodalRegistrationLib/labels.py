"""Label transfer through a rigid transform, in both directions.

Two modes:
* ``"linear"`` (default): each label's indicator is resampled with linear interpolation and every
  target voxel takes the label with the largest weight (per-label linear + argmax). Smoother
  boundaries than nearest neighbour when going from thick slices to a finer grid.
* ``"nearest"``: nearest-neighbour sampling of the label values.
"""
from __future__ import annotations

import numpy as np

from . import geometry
from .errors import InputError
from .volume import Volume

MODES = ("linear", "nearest")


def transfer(labels: Volume, target_shape, target_affine: np.ndarray,
             target_to_source_world: np.ndarray | None = None, mode: str = "linear") -> np.ndarray:
    """Resamples an integer label map onto a target grid; outside the source grid -> 0."""
    if mode not in MODES:
        raise InputError(f"unknown label interpolation {mode!r}; choose from {MODES}")
    if mode == "nearest":
        return geometry.resample(labels, target_shape, target_affine, target_to_source_world, order=0,
                                 dtype=np.int32)
    shape = tuple(int(s) for s in target_shape)
    out = np.zeros(shape, dtype=np.int32)
    src = np.asarray(labels.array)
    present = np.nonzero(src)
    if not len(present[0]):
        return out
    # Only the target voxels that can see a label are computed: the box of the source voxels with a
    # label (one voxel of interpolation support around it), mapped onto the target grid. Outside it
    # every label has weight 0 and background wins, as on the whole grid (same result, much less work).
    lo = np.array([a.min() for a in present]) - 1
    hi = np.array([a.max() for a in present]) + 1
    target_box = _target_box(lo, hi, labels.affine, shape, target_affine, target_to_source_world)
    if target_box is None:
        return out
    (t0, t1) = target_box
    sub_shape = tuple(int(b - a) for a, b in zip(t0, t1))
    sub_affine = np.asarray(target_affine, dtype=np.float64) @ _shift(t0)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, np.asarray(src.shape) - 1)
    crop = src[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
    crop_affine = np.asarray(labels.affine, dtype=np.float64) @ _shift(lo)
    values = [int(v) for v in np.unique(crop) if v != 0]
    # Background competes like any label; outside the source grid (and its cropped box, where the
    # source holds no label) it has full weight.
    bg = Volume((crop == 0).astype(np.float32), crop_affine)
    best = geometry.resample(bg, sub_shape, sub_affine, target_to_source_world, order=1, cval=1.0)
    sub = np.zeros(sub_shape, dtype=np.int32)
    for v in values:
        ind = Volume((crop == v).astype(np.float32), crop_affine)
        w = geometry.resample(ind, sub_shape, sub_affine, target_to_source_world, order=1)
        win = w > best
        sub[win] = v
        best[win] = w[win]
    out[t0[0]:t1[0], t0[1]:t1[1], t0[2]:t1[2]] = sub
    return out


def _shift(offset) -> np.ndarray:
    """The 4x4 matrix adding ``offset`` to voxel indices."""
    m = np.eye(4)
    m[:3, 3] = np.asarray(offset, dtype=np.float64)
    return m


def _target_box(lo, hi, source_affine, target_shape, target_affine, target_to_source_world):
    """Half-open index box ``(start, stop)`` of the target voxels whose centres map into the source
    index box ``[lo, hi]`` (inclusive, padded by one voxel), or None when none do."""
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world_to_target = np.linalg.inv(np.asarray(target_affine, dtype=np.float64))
    source_to_target_world = np.eye(4) if target_to_source_world is None else \
        np.linalg.inv(np.asarray(target_to_source_world, dtype=np.float64))
    idx = (world_to_target @ source_to_target_world @ np.asarray(source_affine, dtype=np.float64) @ corners.T)[:3]
    start = np.maximum(np.floor(idx.min(axis=1)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 2, np.asarray(target_shape))
    if np.any(stop <= start):
        return None
    return start, stop


def moving_labels_onto_fixed(labels: Volume, fixed: Volume, moving_to_fixed: np.ndarray,
                             mode: str = "linear") -> Volume:
    """Coronal (moving) labels carried onto the axial (fixed) grid."""
    arr = transfer(labels, fixed.shape, fixed.affine, np.linalg.inv(moving_to_fixed), mode)
    return Volume(arr, fixed.affine.copy())


def fixed_labels_onto_moving(labels: Volume, moving: Volume, moving_to_fixed: np.ndarray,
                             mode: str = "linear") -> Volume:
    """Axial (fixed) labels carried onto the coronal (moving) grid."""
    arr = transfer(labels, moving.shape, moving.affine, moving_to_fixed, mode)
    return Volume(arr, moving.affine.copy())


def color_table(values, offset_names: dict | None = None) -> str:
    """A Slicer-readable colour table (``index name R G B A`` per line) for the given label values."""
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
    lines = ["# MultimodalRegistration label colours: index name R G B A", "0 background 0 0 0 0"]
    for n, v in enumerate(sorted(int(x) for x in values if int(x) != 0)):
        r, g, b = palette[n % len(palette)]
        name = (offset_names or {}).get(v, f"label_{v}")
        lines.append(f"{v} {name} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"

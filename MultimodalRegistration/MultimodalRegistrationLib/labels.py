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
    values = [int(v) for v in np.unique(labels.array) if v != 0]
    shape = tuple(int(s) for s in target_shape)
    # Background competes like any label; outside the source grid it has full weight.
    bg = Volume((labels.array == 0).astype(np.float32), labels.affine)
    best = geometry.resample(bg, shape, target_affine, target_to_source_world, order=1, cval=1.0)
    out = np.zeros(shape, dtype=np.int32)
    for v in values:
        ind = Volume((labels.array == v).astype(np.float32), labels.affine)
        w = geometry.resample(ind, shape, target_affine, target_to_source_world, order=1)
        win = w > best
        out[win] = v
        best[win] = w[win]
    return out


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

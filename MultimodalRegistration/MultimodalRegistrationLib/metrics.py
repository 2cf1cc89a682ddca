"""Accuracy measures in physical units: target registration error (mm) and Dice.

The one implementation of TRE and Dice: the benchmarks, ``mmreg demo`` and the Slicer module's self-test
(``MultimodalRegistrationSlicerLib.results`` imports this file inside its functions, so the panel still
loads before the core's dependencies are installed) all call it. Because the self-test runs it in
Slicer's own Python, it stays Python 3.9 (``.ci/check_py39.sh`` covers the whole core) and needs only
numpy and :mod:`geometry` at import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import geometry

if TYPE_CHECKING:  # annotations only: volume's NIfTI I/O is not needed to score a result
    from .volume import Volume


class SignalPoints:
    """The voxel centres (moving world, every ``step``-th voxel per axis) of the moving stack that carry
    signal (above ``threshold_fraction`` of its 99.5th percentile): the pose-independent part of
    :func:`overlap_points`, computed once for a caller that needs the overlap under many poses."""

    def __init__(self, moving: Volume, step: int = 2, threshold_fraction: float = 0.05):
        arr = np.asarray(moving.array, dtype=np.float32)
        sl = tuple(slice(None, None, step) if moving.shape[a] > 2 * step else slice(None) for a in range(3))
        sub = arr[sl]
        idx = np.stack(np.meshgrid(*[np.arange(moving.shape[a])[sl[a]] for a in range(3)], indexing="ij"), axis=-1)
        thr = threshold_fraction * float(np.percentile(arr, 99.5))
        keep = sub > thr
        self.world = moving.voxel_to_world(idx[keep].astype(np.float64))

    def inside(self, fixed: Volume, moving_to_fixed: np.ndarray, max_points: int = 20000,
               seed: int = 0) -> np.ndarray:
        """The points (N, 3) that ``moving_to_fixed`` puts inside the fixed field of view (at most
        ``max_points``, drawn with ``seed``)."""
        in_fixed = fixed.world_to_voxel(geometry.apply(moving_to_fixed, self.world))
        hi = np.asarray(fixed.shape) - 1
        ok = np.all((in_fixed >= -0.5) & (in_fixed <= hi + 0.5), axis=1)
        pts = self.world[ok]
        if len(pts) > max_points:
            rng = np.random.default_rng(seed)
            pts = pts[rng.choice(len(pts), max_points, replace=False)]
        return pts


def overlap_points(moving: Volume, fixed: Volume, moving_to_fixed_true: np.ndarray,
                   step: int = 2, threshold_fraction: float = 0.05, max_points: int = 20000,
                   seed: int = 0) -> np.ndarray:
    """Moving-world points (N, 3) over the overlap: voxel centres of the moving grid that carry
    signal and land inside the fixed field of view under the true transform (:class:`SignalPoints`)."""
    return SignalPoints(moving, step, threshold_fraction).inside(fixed, moving_to_fixed_true, max_points, seed)


def point_errors(moving_to_fixed_est, moving_to_fixed_true, points) -> np.ndarray:
    """Distance (mm) between where the estimated and the true 4x4 moving->fixed maps carry each of the
    moving-world ``points`` (N, 3); matrices and points may be nested lists."""
    est = np.asarray(moving_to_fixed_est, dtype=np.float64)
    true = np.asarray(moving_to_fixed_true, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.linalg.norm(geometry.apply(est, pts) - geometry.apply(true, pts), axis=1)


def tre(moving_to_fixed_est, moving_to_fixed_true, points) -> dict:
    """Target registration error over ``points`` (moving world): mean, median, p95, max in mm."""
    if len(points) == 0:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
    d = point_errors(moving_to_fixed_est, moving_to_fixed_true, points)
    return {"mean": float(d.mean()), "median": float(np.median(d)), "p95": float(np.percentile(d, 95)),
            "max": float(d.max()), "n": int(len(d))}


def transform_error(moving_to_fixed_est: np.ndarray, moving_to_fixed_true: np.ndarray,
                    center: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, translation error in mm at ``center``) of the residual transform."""
    residual = moving_to_fixed_est @ np.linalg.inv(moving_to_fixed_true)
    rot = geometry.rotation_angle_deg(residual)
    c = np.asarray(center, dtype=np.float64)
    trans = float(np.linalg.norm(geometry.apply(residual, c[None])[0] - c))
    return rot, trans


def dice(a, b, labels=None, mask: np.ndarray | None = None) -> dict[int, float]:
    """Dice per non-zero label of two label arrays on the same grid (optionally restricted to ``mask``).

    ``labels`` default to every non-zero label of either array; a label present in only one scores 0,
    a label in neither (only possible when ``labels`` are given) NaN.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        a = a[mask]
        b = b[mask]
    if labels is None:
        labels = sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0})
    out = {}
    for lab in labels:
        if lab == 0:
            continue
        x = a == lab
        y = b == lab
        s = int(x.sum()) + int(y.sum())
        out[int(lab)] = float(2.0 * np.logical_and(x, y).sum() / s) if s else float("nan")
    return out


def mean_dice(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice of the union of all non-zero labels (foreground Dice)."""
    d = dice(np.asarray(a) > 0, np.asarray(b) > 0, labels=[1], mask=mask)
    return d[1]

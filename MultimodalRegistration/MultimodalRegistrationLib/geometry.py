"""Rigid transforms, resampling and the RAS/LPS edge.

Every transform in the core is a 4x4 homogeneous matrix acting on RAS points in mm. The
registration result ``moving_to_fixed`` maps a point of the coronal (moving) world to the axial
(fixed) world. ITK/SimpleITK use LPS and a fixed->moving point map. This module is the one RAS/LPS
bridge: transforms cross it with :func:`to_itk_fixed_to_moving` / :func:`from_itk_fixed_to_moving`,
image geometry with :func:`lps_geometry` / :func:`affine_from_lps` (and :func:`volume_to_sitk` /
:func:`sitk_to_volume` for SimpleITK images); the elastix and ANTs wrappers use the same functions.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .volume import Volume, atomic_write

#: diag(-1, -1, 1, 1): flips between RAS and LPS (its own inverse).
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """3x3 rotation about R, then A, then S (angles in radians): ``Rz @ Ry @ Rx``."""
    cx, sx = np.cos(rx), np.sin(rx)
    cy, sy = np.cos(ry), np.sin(ry)
    cz, sz = np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def rotvec_matrix(v) -> np.ndarray:
    """3x3 rotation of angle |v| (radians) about the axis v/|v| (Rodrigues' formula)."""
    v = np.asarray(v, dtype=np.float64)
    th = float(np.linalg.norm(v))
    if th < 1e-12:
        return np.eye(3)
    k = v / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


def rigid_matrix(params, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform from ``(rx, ry, rz, tx, ty, tz)`` (radians, mm) rotating about ``center``.

    p' = R (p - c) + c + t
    """
    rx, ry, rz, tx, ty, tz = (float(v) for v in params)
    R = rotation_matrix(rx, ry, rz)
    c = np.asarray(center, dtype=np.float64)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = c - R @ c + np.array([tx, ty, tz])
    return M


def rigid_params(M: np.ndarray, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`: ``(rx, ry, rz, tx, ty, tz)`` for a rigid ``M``."""
    R = M[:3, :3]
    ry = np.arcsin(np.clip(-R[2, 0], -1.0, 1.0))
    rx = np.arctan2(R[2, 1], R[2, 2])
    rz = np.arctan2(R[1, 0], R[0, 0])
    c = np.asarray(center, dtype=np.float64)
    t = M[:3, 3] - (c - R @ c)
    return np.array([rx, ry, rz, *t])


def rotation_angle_deg(M: np.ndarray) -> float:
    """Angle of the rotation part of a rigid matrix, in degrees."""
    R = M[:3, :3]
    cos = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def about(rotation: np.ndarray, center, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 map p -> R (p - c) + c + t (R: a 3x3 rotation)."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = np.asarray(center) - rotation @ np.asarray(center) + np.asarray(translation, dtype=np.float64)
    return out


def apply(M: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a 4x4 matrix to an (..., 3) array of points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ M[:3, :3].T + M[:3, 3]


def ras_to_lps(M: np.ndarray) -> np.ndarray:
    """Conjugates a RAS point map into the same map in LPS (and back: it is an involution)."""
    return RAS_LPS @ M @ RAS_LPS


lps_to_ras = ras_to_lps


def to_itk_fixed_to_moving(moving_to_fixed_ras: np.ndarray) -> np.ndarray:
    """Our contract (moving->fixed, RAS) to ITK's resampling transform (fixed->moving, LPS)."""
    return ras_to_lps(np.linalg.inv(moving_to_fixed_ras))


def from_itk_fixed_to_moving(fixed_to_moving_lps: np.ndarray) -> np.ndarray:
    """ITK's fixed->moving LPS point map (e.g. a SimpleITK/elastix/ANTs result) to our contract."""
    return np.linalg.inv(ras_to_lps(fixed_to_moving_lps))


def lps_geometry(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The LPS origin (3,) and direction cosines (3x3, columns = voxel axes) of ``vol``, as ITK wants them."""
    flip = RAS_LPS[:3, :3]
    return flip @ vol.affine[:3, 3], flip @ vol.direction


def affine_from_lps(origin_lps, direction_lps, spacing) -> np.ndarray:
    """Our RAS voxel-to-world affine from ITK's LPS origin, direction (3x3) and spacing."""
    flip = RAS_LPS[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = flip @ np.asarray(direction_lps, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = flip @ np.asarray(origin_lps, dtype=np.float64)
    return affine


def volume_to_sitk(vol: Volume, dtype=np.float32):
    """A SimpleITK image with the volume's geometry (RAS affine -> LPS origin/direction)."""
    import SimpleITK as sitk

    arr = np.asarray(vol.array, dtype=dtype)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))   # (i,j,k) -> (z,y,x)
    origin, direction = lps_geometry(vol)
    img.SetSpacing([float(s) for s in vol.spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def sitk_to_volume(img) -> Volume:
    """The SimpleITK image as a Volume (LPS origin/direction -> RAS affine)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return Volume(arr, affine_from_lps(img.GetOrigin(), img.GetDirection(), img.GetSpacing()))


def sitk_transform_to_matrix(tx) -> np.ndarray:
    """4x4 matrix of a SimpleITK linear transform (Euler3D, Affine, Versor, ...)."""
    import SimpleITK as sitk

    if isinstance(tx, sitk.CompositeTransform):
        M = np.eye(4)
        for k in range(tx.GetNumberOfTransforms()):
            M = M @ sitk_transform_to_matrix(tx.GetNthTransform(k))
        return M
    A = np.array(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.array(tx.GetCenter(), dtype=np.float64)
    t = np.array(tx.GetTranslation(), dtype=np.float64)
    M = np.eye(4)
    M[:3, :3] = A
    M[:3, 3] = t + c - A @ c
    return M


def write_itk_tfm(moving_to_fixed_ras: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes the transform as an ITK ``.tfm`` file (fixed->moving in LPS, ITK's convention).

    Slicer's Data module loads it as a linear transform node whose "transform to parent" is our
    moving->fixed RAS matrix, so placing the coronal volume under it aligns it with the axial one.
    """
    import SimpleITK as sitk

    T = to_itk_fixed_to_moving(np.asarray(moving_to_fixed_ras, dtype=np.float64))
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(T[:3, :3].ravel().tolist())
    tx.SetTranslation(T[:3, 3].tolist())
    return atomic_write(path, lambda tmp: sitk.WriteTransform(tx, tmp), suffix=".tfm")


def read_itk_tfm(path: str | os.PathLike) -> np.ndarray:
    """Reads a ``.tfm`` written by :func:`write_itk_tfm` back as moving->fixed RAS."""
    import SimpleITK as sitk

    tx = sitk.ReadTransform(str(path))
    return from_itk_fixed_to_moving(sitk_transform_to_matrix(tx))


# ----------------------------------------------------------------------------- resampling

def grid_map(source_affine: np.ndarray, target_affine: np.ndarray,
             target_to_source_world: np.ndarray | None = None) -> np.ndarray:
    """Matrix taking target voxel indices to source voxel indices."""
    W = np.eye(4) if target_to_source_world is None else np.asarray(target_to_source_world)
    return np.linalg.inv(source_affine) @ W @ target_affine


def resample(source: Volume, target_shape, target_affine: np.ndarray,
             target_to_source_world: np.ndarray | None = None, order: int = 1,
             cval: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Samples ``source`` at the voxel centres of a target grid.

    ``target_to_source_world`` maps target-world points to source-world points (identity when both
    live in one world). ``order`` 0 = nearest (labels), 1 = linear, 3 = cubic. Outside -> ``cval``.
    """
    G = grid_map(source.affine, np.asarray(target_affine, dtype=np.float64), target_to_source_world)
    src = np.asarray(source.array)
    if order > 0 and src.dtype.kind not in "f":
        src = src.astype(np.float32)
    out = ndimage.affine_transform(src, G[:3, :3], offset=G[:3, 3], output_shape=tuple(int(s) for s in target_shape),
                                   order=order, mode="constant", cval=cval, prefilter=order > 1)
    return out.astype(dtype, copy=False)


def moving_onto_fixed(moving: Volume, fixed: Volume, moving_to_fixed: np.ndarray, order: int = 1,
                      dtype=np.float32) -> Volume:
    """The moving volume resampled onto the fixed grid through the moving->fixed transform."""
    arr = resample(moving, fixed.shape, fixed.affine, np.linalg.inv(moving_to_fixed), order=order, dtype=dtype)
    return Volume(arr, fixed.affine.copy())


def fixed_onto_moving(fixed: Volume, moving: Volume, moving_to_fixed: np.ndarray, order: int = 1,
                      dtype=np.float32) -> Volume:
    """The fixed volume resampled onto the moving grid (the inverse direction)."""
    arr = resample(fixed, moving.shape, moving.affine, moving_to_fixed, order=order, dtype=dtype)
    return Volume(arr, moving.affine.copy())


def inside_mask(source_shape, source_affine, target_shape, target_affine,
                target_to_source_world: np.ndarray | None = None, margin: float = 0.0) -> np.ndarray:
    """Boolean mask over the target grid: True where the voxel centre falls inside the source grid."""
    G = grid_map(np.asarray(source_affine), np.asarray(target_affine), target_to_source_world)
    idx = np.indices(tuple(int(s) for s in target_shape), dtype=np.float64).reshape(3, -1).T
    src = idx @ G[:3, :3].T + G[:3, 3]
    hi = np.asarray(source_shape, dtype=np.float64) - 1.0
    ok = np.all((src >= -0.5 - margin) & (src <= hi + 0.5 + margin), axis=1)
    return ok.reshape(tuple(int(s) for s in target_shape))

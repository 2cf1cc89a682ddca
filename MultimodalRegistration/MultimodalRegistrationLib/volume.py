"""Volumes with geometry: loading, validation, atomic saving, orientation helpers.

Conventions (DESIGN.md): ``Volume.array`` is indexed (i, j, k) like nibabel; ``Volume.affine`` is the
4x4 matrix that maps voxel indices (i, j, k, 1) to RAS world coordinates in millimetres. Slicer and
nibabel speak RAS; ITK/SimpleITK speak LPS and are converted in :mod:`geometry` only.
"""
from __future__ import annotations

import gzip
import os
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

#: Voxel spacings outside this range (mm) are refused as absurd.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
#: Volumes whose float32 copy would exceed this many bytes are refused before loading
#: (override with the environment variable MMREG_MAX_VOLUME_BYTES, read at each load).
DEFAULT_MAX_BYTES = 2 * 1024**3


def max_volume_bytes() -> int:
    env = os.environ.get("MMREG_MAX_VOLUME_BYTES")
    try:
        return int(env) if env else DEFAULT_MAX_BYTES
    except ValueError:
        raise InputError(f"MMREG_MAX_VOLUME_BYTES must be an integer number of bytes, got {env!r}") from None

PLANES = ("sagittal", "coronal", "axial")  # plane whose normal is R, A, S


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image: ``array`` in (i, j, k) order and the IJK->RAS ``affine`` (mm)."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got {aff.shape}")
        if np.asarray(self.array).ndim != 3:
            raise InputError(f"a volume must be 3D, got {np.asarray(self.array).ndim} dimensions")
        object.__setattr__(self, "affine", aff)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, other voxels (must have the same shape)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.affine.copy())

    def center_world(self) -> np.ndarray:
        """RAS position of the centre of the voxel grid."""
        c = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return (self.affine @ np.append(c, 1.0))[:3]

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        inv = np.linalg.inv(self.affine)
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ inv[:3, :3].T + inv[:3, 3]


def slice_axis(vol: Volume) -> int:
    """The voxel axis along which the stack was acquired: the one with the largest spacing.

    Ties (isotropic volumes) resolve to the last of the tied axes (k), the usual slice axis.
    """
    sp = vol.spacing
    candidates = np.flatnonzero(np.isclose(sp, sp.max(), rtol=1e-3))
    return int(candidates[-1])


def slice_normal(vol: Volume) -> np.ndarray:
    """Unit RAS vector of the slice axis."""
    return vol.direction[:, slice_axis(vol)]


def plane(vol: Volume) -> str:
    """'axial', 'coronal' or 'sagittal': the anatomical plane of the slices (from direction cosines)."""
    n = np.abs(slice_normal(vol))
    return PLANES[int(np.argmax(n))]


def obliquity_deg(vol: Volume) -> float:
    """Angle in degrees between the slice normal and the nearest anatomical axis."""
    n = np.abs(slice_normal(vol))
    return float(np.degrees(np.arccos(np.clip(n.max(), -1.0, 1.0))))


# ----------------------------------------------------------------------------- loading

def _describe(path: Path) -> str:
    return f"'{path}'"


def _read_nifti(path: Path, max_bytes: int):
    import nibabel as nib

    if not path.exists():
        raise InputError(f"{_describe(path)} does not exist")
    if path.is_dir():
        raise InputError(f"{_describe(path)} is a folder, not a NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign files
        raise InputError(f"{_describe(path)} is not a readable NIfTI image ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{_describe(path)} is a {type(img).__name__}, not a NIfTI image")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{_describe(path)} has {len(shape)} dimensions {shape}; a 3D volume is required")
    if min(shape) < 1:
        raise InputError(f"{_describe(path)} is empty (shape {shape})")
    nbytes = int(np.prod(shape, dtype=np.int64)) * 4
    if nbytes > max_bytes:
        raise InputError(
            f"{_describe(path)} needs {nbytes / 1024**3:.1f} GiB as float32, above the limit of "
            f"{max_bytes / 1024**3:.1f} GiB (set MMREG_MAX_VOLUME_BYTES to raise it)")
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(f"{_describe(path)} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    data = np.asarray(data).reshape(shape)
    _warn_header(img, shape, path)
    return data, np.asarray(img.affine, dtype=np.float64)


class HeaderWarning(UserWarning):
    """A header that is usable but suspicious (tools may place the file differently)."""


def header_used(img) -> str:
    """Which NIfTI header nibabel's affine (ours) comes from: 'sform', 'qform' or 'none'."""
    if int(img.header["sform_code"]) > 0:
        return "sform"
    return "qform" if int(img.header["qform_code"]) > 0 else "none"


def _warn_header(img, shape, path: Path) -> None:
    """Warns (HeaderWarning) when the qform and sform disagree by more than 1 mm anywhere in the volume,
    and when the affine has shear, which a rigid registration (and ITK, Slicer's reader) cannot represent."""
    import warnings

    hdr = img.header
    used = header_used(img)
    if int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0:
        q, s = img.get_qform(), img.get_sform()
        corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                            for k in (0, shape[2] - 1)])
        d = float(np.linalg.norm((corners @ q.T - corners @ s.T)[:, :3], axis=1).max())
        if d > 1.0:
            warnings.warn(f"{_describe(path)}: its qform and sform disagree by up to {d:.1f} mm; the {used} was used "
                          f"(nibabel's rule); ITK-based tools, Slicer among them, may use the other and place the "
                          f"image differently", HeaderWarning, stacklevel=3)
    A = np.asarray(img.affine[:3, :3], dtype=np.float64)
    cols = A / np.linalg.norm(A, axis=0)
    dots = np.abs(cols.T @ cols - np.eye(3)).max()
    if dots > 1e-3:
        warnings.warn(f"{_describe(path)}: its {used} affine has shear (axes {np.degrees(np.arcsin(min(dots, 1.0))):.2f} "
                      f"deg from perpendicular); rigid registration ignores it and other tools may place the image "
                      f"differently", HeaderWarning, stacklevel=3)


def _check_affine(affine: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{name} has a non-finite affine")
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9 or np.any(sp == 0):
        raise InputError(f"{name} has a singular affine (voxel axes collapse)")
    if np.any(sp < MIN_SPACING_MM) or np.any(sp > MAX_SPACING_MM):
        raise InputError(
            f"{name} has voxel spacing {np.round(sp, 4).tolist()} mm, outside the plausible range "
            f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm for MRI")


def validate_image(array: np.ndarray, affine: np.ndarray, name: str = "image") -> np.ndarray:
    """Checks an intensity image and returns it as float32.

    Non-finite voxels (NaN/Inf) are replaced by 0 with a warning; an image with no finite voxel,
    or a constant image (all zero included), is refused: there is nothing to register.
    """
    _check_affine(affine, name)
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} has unsupported voxel type {arr.dtype}")
    arr = arr.astype(np.float32, copy=True)
    finite = np.isfinite(arr)
    if not finite.any():
        raise InputError(f"{name} has no finite voxel (all NaN/Inf)")
    if not finite.all():
        n_bad = int((~finite).sum())
        warnings.warn(f"{name}: {n_bad} NaN/Inf voxels replaced by 0", stacklevel=2)
        arr[~finite] = 0.0
    if float(arr.max()) == float(arr.min()):
        raise InputError(f"{name} is constant (every voxel is {float(arr.min()):g}); nothing to register")
    if min(arr.shape) < 2:
        raise InputError(f"{name} has shape {arr.shape}: a single slice (2D); a 3D stack is required")
    return arr


def validate_labels(array: np.ndarray, affine: np.ndarray, name: str = "label map") -> np.ndarray:
    """Checks a label map (finite, non-negative integer values) and returns it as int32."""
    _check_affine(affine, name)
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} has NaN/Inf values; labels must be integers")
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{name} has non-integer values; is it an intensity image rather than labels?")
    elif arr.dtype.kind not in "biu":
        raise InputError(f"{name} has unsupported voxel type {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} has negative labels")
    if arr.size and arr.max() > 65535:
        raise InputError(f"{name} has label values above 65535")
    return arr.astype(np.int32)


def load_volume(path: str | os.PathLike, *, labels: bool = False, name: str | None = None,
                max_bytes: int | None = None) -> Volume:
    """Reads a 3D NIfTI file (``.nii`` or ``.nii.gz``) with its geometry, validating it.

    ``labels=True`` reads an integer label map; otherwise an intensity image as float32.
    Raises :class:`InputError` with a one-line message for anything unusable.
    """
    path = Path(path)
    name = name or f"{_describe(path)}"
    data, affine = _read_nifti(path, max_volume_bytes() if max_bytes is None else max_bytes)
    arr = validate_labels(data, affine, name) if labels else validate_image(data, affine, name)
    return Volume(arr, affine)


def check_labels_match(labels: Volume, image: Volume, name: str = "label map", image_name: str = "its image") -> None:
    """Refuses a label map whose grid differs from its image's."""
    if labels.shape != image.shape:
        raise InputError(f"{name} has shape {labels.shape} but {image_name} has {image.shape}; they must share a grid")
    if not np.allclose(labels.affine, image.affine, atol=1e-3):
        raise InputError(f"{name} is on another grid than {image_name} (affines differ); resample it first")


# ----------------------------------------------------------------------------- saving

def _nifti_suffix(path: Path) -> str:
    name = path.name
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise InputError(f"output {_describe(path)} must end in .nii or .nii.gz")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer, suffix: str = "") -> Path:
    """Writes through ``writer(tmp_path)`` to a temporary file beside ``path``, then renames it.

    A crash or Ctrl-C mid-write leaves the destination untouched (no truncated file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix, dir=str(path.parent))
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_volume(vol: Volume, path: str | os.PathLike, *, dtype=None, extra_dims: np.ndarray | None = None) -> Path:
    """Writes ``vol`` as NIfTI atomically (temporary file in the same folder, then rename).

    ``extra_dims``: optional array with more than 3 dimensions (e.g. a multi-channel (i, j, k, c)
    volume) written instead of ``vol.array`` with ``vol``'s affine.
    """
    import nibabel as nib

    path = Path(path)
    suffix = _nifti_suffix(path)
    data = vol.array if extra_dims is None else extra_dims
    data = np.asarray(data)
    if dtype is not None:
        data = data.astype(dtype)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype == np.bool_:
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, vol.affine)
    img.set_qform(vol.affine, code=1)
    img.set_sform(vol.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if suffix != ".nii.gz":
        return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=suffix)
    # The same single-file NIfTI nibabel writes, gzip-compressed by ISA-L when installed (about 6x
    # faster than zlib at the same ratio: benchmarks/bench_outputs.py; any gzip reader opens it), else by
    # zlib at nibabel's level 1.
    raw = img.to_bytes()
    return atomic_write(path, lambda tmp: _write_file(tmp, gzip_compress(raw)), suffix=suffix)


def _write_file(path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def gzip_compress(data: bytes) -> bytes:
    """gzip stream of ``data`` (level 1): ISA-L's igzip when the ``isal`` package is installed, else zlib."""
    try:
        from isal import igzip
    except ImportError:
        import gzip
        return gzip.compress(data, compresslevel=1, mtime=0)
    return igzip.compress(data, compresslevel=1, mtime=0)

"""Slice-by-slice ceT1 <-> T2 conversion with a NICE-GAN checkpoint, and checkpoint I/O.

Checkpoint = ``<name>.safetensors`` (inference weights only: both encoders and both decoders) +
``<name>.json`` sidecar (architecture config, slice size, intensity normalisation, training data,
iterations, exact training command, wall time, hardware, SHA-256 of the weights file). Loading
checks the hash, the keys and the shapes; pickle files are refused.

Intensity normalisation is recorded in the sidecar and applied exactly as recorded (training uses
the same functions), so old checkpoints keep their normalisation:

* ``"percentile"`` (checkpoints up to issue 12): per volume, ``lo = percentile(all voxels, 0.5)``,
  ``hi = percentile(voxels > lo, 99.5)``, ``x01 = clip((x - lo) / (hi - lo), 0, 1)``. With a full
  head the scalp fat and vessels set ``hi``, so the brain of a with-skull scan ends up darker than
  the brain of the same scan skull-stripped.
* ``"tissue-peak"`` (issue 12): ``x01 = clip(x / ref * target[domain], 0, 1)`` where ``ref`` is the
  dominant mode of the smoothed intensity histogram in the *core* of the object (voxels at least
  ``core_mm`` from the object's surface, in mm, so scalp, skull and cortex are left out whether the
  scan has a skull or not); for ceT1 and T2 that mode is the white-matter peak. ``target`` is the
  level the peak is mapped to per domain (A = ceT1, B = T2).

Network input is ``2 * x01 - 1``; the network output (in [-1, 1]) is mapped back with the same
scale, so the synthetic volume lives in the intensity range of the input volume.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
from typing import Optional

import numpy as np

from .device import resolve_device
from .errors import CheckpointError, InputError
from .progress import ProgressFn, add_progress_argument, progress_from_args, report
from .volume import Volume, atomic_write, load_volume, save_volume, slice_axis

DIRECTIONS = ("ceT1-to-T2", "T2-to-ceT1")
_DIR_DOMAINS = {"ceT1-to-T2": ("A", "B"), "T2-to-ceT1": ("B", "A")}
CHECKPOINT_FORMAT = "mmreg-nicegan-v1"
DEFAULT_CHECKPOINT_NAME = "nicegan_cet1_t2.safetensors"
NORM_LOW_PCT = 0.5
NORM_HIGH_PCT = 99.5

NORMALISATION = {
    "method": "percentile",
    "low_percentile_all_voxels": NORM_LOW_PCT,
    "high_percentile_voxels_above_low": NORM_HIGH_PCT,
    "clip": [0.0, 1.0],
    "network_range": [-1.0, 1.0],
    "output": "network output mapped back to the input volume's [lo, hi] range",
    "scope": "per volume (all slices share lo/hi)",
}


# ----------------------------------------------------------------------------- intensity normalisation

def robust_range(arr: np.ndarray) -> tuple[float, float]:
    """(lo, hi) for the robust percentile scaling of a whole volume."""
    a = np.asarray(arr, dtype=np.float32)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise InputError("volume has no finite voxel")
    lo = float(np.percentile(finite, NORM_LOW_PCT))
    above = finite[finite > lo]
    hi = float(np.percentile(above, NORM_HIGH_PCT)) if above.size else lo
    if not hi > lo:
        hi = float(finite.max())
    if not hi > lo:
        raise InputError("volume is constant; nothing to convert")
    return lo, hi


def normalise01(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a = (np.asarray(arr, dtype=np.float32) - lo) / (hi - lo)
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


#: The tissue-peak normalisation of issue 12 (``target`` filled in per checkpoint; these are the defaults).
TISSUE_PEAK_CORE_MM = 20.0
TISSUE_PEAK_TARGETS = {"A": 0.55, "B": 0.27}  # mean old-normalised WM peak of the 3 training pairs


def tissue_peak_normalisation(targets: Optional[dict] = None, core_mm: float = TISSUE_PEAK_CORE_MM) -> dict:
    t = dict(TISSUE_PEAK_TARGETS if targets is None else targets)
    return {
        "method": "tissue-peak",
        "core_mm": float(core_mm),
        "target": {"A": float(t["A"]), "B": float(t["B"])},
        "reference": "dominant mode of the smoothed histogram (256 bins, sigma 2 bins) of the voxels at least "
                     "core_mm from the surface of the object mask (largest component of x > 10% of the "
                     "99th percentile of x > 0, closed, holes filled per slice); white matter for ceT1 and T2",
        "formula": "x01 = clip(max(x, 0) / ref * target[domain], 0, 1); domain A = ceT1, B = T2",
        "network_range": [-1.0, 1.0],
        "output": "network output x01 mapped back with x = x01 * ref / target[source domain]",
        "scope": "per volume (all slices share ref)",
    }


def object_mask(arr: np.ndarray, slice_ax: int = 2) -> np.ndarray:
    """The imaged object (head, or brain when skull-stripped): the largest connected component of
    ``x > 10 % of the 99th percentile of x > 0``, closed, holes filled slice by slice along ``slice_ax``."""
    from scipy import ndimage as ndi

    a = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    pos = a[a > 0]
    if pos.size == 0:
        raise InputError("volume has no positive voxel; nothing to convert")
    m = a > 0.1 * float(np.percentile(pos, 99))
    lab, n = ndi.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        m = lab == int(np.argmax(sizes))
    m = ndi.binary_closing(m, structure=np.ones((3, 3, 3), bool), iterations=1) | m
    m = np.moveaxis(m, slice_ax, 0)
    m = np.stack([ndi.binary_fill_holes(s) for s in m])
    return np.moveaxis(m, 0, slice_ax)


def tissue_peak(arr: np.ndarray, spacing, core_mm: float = TISSUE_PEAK_CORE_MM,
                return_mask: bool = False):
    """The reference intensity of the tissue-peak normalisation (see the module docstring)."""
    from scipy import ndimage as ndi

    a = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    spacing = np.asarray(spacing, dtype=np.float64)
    m = object_mask(a, int(np.argmax(spacing)))
    # pad so that the volume border counts as outside only where the object really ends there
    dist = ndi.distance_transform_edt(np.pad(m, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    core = dist >= core_mm
    if core.sum() < max(64, 0.02 * m.sum()):  # small object (crop, child, brain-only slab): its inner half
        core = dist >= 0.5 * dist.max()
    v = a[core]
    top = float(np.percentile(v, 99.5))
    if not top > 0:
        raise InputError("volume has no signal inside the object; nothing to convert")
    hist, edges = np.histogram(v, bins=256, range=(0.0, top))
    hist = ndi.gaussian_filter1d(hist.astype(np.float64), 2.0)
    hist[:8] = 0.0  # ignore the dark end (air in sinuses, flow voids, dark CSF on T1)
    ref = float(0.5 * (edges[int(np.argmax(hist))] + edges[int(np.argmax(hist)) + 1]))
    return (ref, core) if return_mask else ref


def normalisation_method(norm: Optional[dict]) -> str:
    method = (norm or {}).get("method", "percentile")
    if method not in ("percentile", "tissue-peak"):
        raise CheckpointError(f"unknown intensity normalisation {method!r} in the checkpoint sidecar")
    return method


def volume_scale(arr: np.ndarray, spacing, norm: Optional[dict], domain: str) -> tuple[float, float]:
    """(lo, hi) such that ``normalise01(arr, lo, hi)`` is the normalisation ``norm`` for ``domain``
    (``"A"`` = ceT1, ``"B"`` = T2); ``x = x01 * (hi - lo) + lo`` maps network output back."""
    if normalisation_method(norm) == "percentile":
        return robust_range(arr)
    ref = tissue_peak(arr, spacing, float(norm.get("core_mm", TISSUE_PEAK_CORE_MM)))
    return 0.0, ref / float(norm["target"][domain])


# ----------------------------------------------------------------------------- translators

class Translator:
    """Base class: ``convert(vol, direction)`` returns a volume on the same grid."""

    name: str = "base"
    info: dict = {}

    def convert(self, vol: Volume, direction: str, progress: Optional[ProgressFn] = None,
                batch_size: int = 8) -> Volume:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _check_direction(direction: str) -> None:
        if direction not in DIRECTIONS:
            raise InputError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")


class NoneTranslator(Translator):
    """No conversion: robust percentile scaling of the input to 0..1 only (same grid)."""

    def __init__(self):
        self.name = "none"
        self.info = {"translator": "none", "normalisation": dict(NORMALISATION, output="0..1 (no conversion)")}

    def convert(self, vol: Volume, direction: str, progress: Optional[ProgressFn] = None,
                batch_size: int = 8) -> Volume:
        self._check_direction(direction)
        lo, hi = robust_range(vol.array)
        report(progress, "translate", 0, 1)
        out = vol.with_array(normalise01(vol.array, lo, hi))
        report(progress, "translate", 1, 1)
        return out


def to_square(slices: np.ndarray, size: int, fill: float = -1.0):
    """(N, h, w) numpy -> (N, 1, size, size) torch: pad to a square (centred), then resize.

    Returns the tensor and the padding needed to undo it (``from_square``).
    """
    import torch
    import torch.nn.functional as F

    n, h, w = slices.shape
    m = max(h, w)
    ph, pw = (m - h) // 2, (m - w) // 2
    sq = np.full((n, m, m), fill, dtype=np.float32)
    sq[:, ph:ph + h, pw:pw + w] = slices
    t = torch.from_numpy(sq)[:, None]
    if m != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=m > size)
    return t, (h, w, m, ph, pw)


def from_square(t, geom) -> np.ndarray:
    import torch.nn.functional as F

    h, w, m, ph, pw = geom
    if t.shape[-1] != m:
        t = F.interpolate(t, size=(m, m), mode="bilinear", align_corners=False, antialias=t.shape[-1] > m)
    return t[:, 0, ph:ph + h, pw:pw + w].detach().cpu().numpy().astype(np.float32)


BACKGROUND_LEVEL = 0.02  # normalised intensity below which a voxel can be background


def head_masks(slices01: np.ndarray, level: float = BACKGROUND_LEVEL) -> np.ndarray:
    """Per slice: the object (head or brain) = pixels above ``level`` with holes filled.

    Dark structures inside the head (CSF on T1, bone, flow voids) stay inside the mask because
    the holes are filled; only the air around the object (connected to the slice border) is outside.
    On a noisy background above ``level`` the mask covers everything (no effect).
    """
    from scipy import ndimage as ndi

    masks = np.empty(slices01.shape, dtype=bool)
    st = np.ones((3, 3), bool)
    for i, s in enumerate(slices01):
        m = ndi.binary_closing(s > level, structure=st, iterations=2)
        masks[i] = ndi.binary_dilation(ndi.binary_fill_holes(m), structure=st, iterations=1)
    return masks


class GanTranslator(Translator):
    """NICE-GAN conversion, slice by slice along the stack's slice axis; same grid as the input."""

    def __init__(self, model, meta: dict, weights_path: pathlib.Path, device: str = "cpu",
                 zero_background: bool = True):
        self.model = model
        self.zero_background = zero_background
        self.meta = meta
        self.device = device
        self.size = int(meta["config"]["img_size"])
        self.name = f"nicegan:{weights_path.name}"
        tr = meta.get("training", {})
        self.info = {
            "translator": "nicegan",
            "checkpoint": weights_path.name,
            "sha256": meta.get("sha256"),
            "iterations": tr.get("iterations"),
            "config": meta.get("config"),
            "normalisation": meta.get("normalisation"),
            "device": device,
            "background": "zeroed outside each input slice's head mask" if zero_background else "as generated",
        }

    def translate_slices(self, slices01: np.ndarray, direction: str, batch_size: int = 8,
                         progress: Optional[ProgressFn] = None) -> np.ndarray:
        """(N, h, w) slices in 0..1 -> converted slices in 0..1 (same shape)."""
        import torch

        self._check_direction(direction)
        src, dst = _DIR_DOMAINS[direction]
        n = slices01.shape[0]
        out = np.empty_like(slices01, dtype=np.float32)
        batch_size = max(1, int(batch_size))
        report(progress, "translate", 0, n)
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                chunk = slices01[s:s + batch_size] * 2.0 - 1.0
                t, geom = to_square(chunk, self.size, fill=-1.0)
                y = self.model.translate(t.to(self.device), src, dst).float()
                out[s:s + batch_size] = (from_square(y.clamp(-1, 1), geom) + 1.0) / 2.0
                report(progress, "translate", min(s + batch_size, n), n)
        out = np.clip(out, 0.0, 1.0)
        if self.zero_background:
            out *= head_masks(slices01)
        return out

    def convert(self, vol: Volume, direction: str, progress: Optional[ProgressFn] = None,
                batch_size: int = 8) -> Volume:
        self._check_direction(direction)
        ax = slice_axis(vol)
        lo, hi = volume_scale(vol.array, vol.spacing, self.meta.get("normalisation"), _DIR_DOMAINS[direction][0])
        x01 = np.moveaxis(normalise01(vol.array, lo, hi), ax, 0)
        y01 = self.translate_slices(np.ascontiguousarray(x01), direction, batch_size, progress)
        y = np.moveaxis(y01, 0, ax) * (hi - lo) + lo
        return vol.with_array(y.astype(np.float32))


# ----------------------------------------------------------------------------- checkpoint I/O

def default_checkpoint_path() -> pathlib.Path:
    """The bundled checkpoint: ``MultimodalRegistration/Resources/Models/<file>.safetensors``."""
    return pathlib.Path(__file__).resolve().parents[1] / "Resources" / "Models" / DEFAULT_CHECKPOINT_NAME


def sidecar_path(weights_path: pathlib.Path) -> pathlib.Path:
    weights_path = pathlib.Path(weights_path)
    return weights_path.with_name(weights_path.name[: -len(".safetensors")] + ".json") \
        if weights_path.name.endswith(".safetensors") else weights_path.with_suffix(".json")


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hardware_description() -> str:
    import torch

    s = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores".strip()
    if torch.cuda.is_available():
        s += f"; CUDA {torch.cuda.get_device_name(0)}"
    return s + f"; torch {torch.__version__}; {torch.get_num_threads()} torch threads"


def save_checkpoint(model, path: os.PathLike, training: dict, normalisation: Optional[dict] = None) -> pathlib.Path:
    """Writes the inference weights of ``model`` (NiceGan or InferenceModel) + sidecar, atomically.

    ``normalisation``: the sidecar's normalisation record (default: the old ``percentile`` one)."""
    from safetensors.torch import save_file

    from .nicegan import INFERENCE_PREFIXES, plain_state_dict

    path = pathlib.Path(path)
    if not path.name.endswith(".safetensors"):
        raise CheckpointError(f"checkpoint file must end in .safetensors: {path}")
    sd = plain_state_dict(model, INFERENCE_PREFIXES)
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"format": CHECKPOINT_FORMAT}))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "weights_file": path.name,
        "sha256": sha256_file(path),
        "architecture": "NICE-GAN (Chen et al., CVPR 2020), reduced; see docs/GAN.md",
        "config": model.cfg.to_dict(),
        "slice_size": [model.cfg.img_size, model.cfg.img_size],
        "domains": {"A": "ceT1", "B": "T2"},
        "directions": list(DIRECTIONS),
        "normalisation": normalisation or NORMALISATION,
        "training": training,
    }
    side = sidecar_path(path)
    atomic_write(side, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def load_checkpoint(path: os.PathLike, device: str = "cpu"):
    """-> (InferenceModel on ``device`` in eval mode, sidecar dict). Raises CheckpointError."""
    from .nicegan import InferenceModel, NiceGanConfig

    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if not path.name.endswith(".safetensors") or head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path.name} is not a .safetensors checkpoint; pickle/torch.save files are refused")
    side = sidecar_path(path)
    if not side.exists():
        raise CheckpointError(f"checkpoint sidecar {side.name} is missing next to {path.name}")
    try:
        meta = json.loads(side.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint sidecar {side.name} is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{side.name} is not a {CHECKPOINT_FORMAT} sidecar (foreign checkpoint)")
    digest = sha256_file(path)
    if digest != meta.get("sha256"):
        raise CheckpointError(f"SHA-256 of {path.name} does not match its sidecar (file modified or corrupt)")
    normalisation_method(meta.get("normalisation"))
    try:
        cfg = NiceGanConfig.from_dict(meta["config"])
        model = InferenceModel(cfg)
    except Exception as exc:
        raise CheckpointError(f"{side.name} has an invalid architecture config ({exc})") from None
    try:
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({type(exc).__name__})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path.name} does not hold this architecture's weights "
                              f"({len(missing)} missing, {len(extra)} unexpected tensors)")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise CheckpointError(f"{path.name}: tensor shapes do not match the config (e.g. {bad[0]})")
    model.load_state_dict(sd, strict=True)
    model.eval().to(device)
    return model, meta


def load_translator(spec: str = "default", device: str = "auto") -> Translator:
    """``"none"`` -> NoneTranslator; ``"default"`` -> bundled checkpoint; else a .safetensors path."""
    if spec is None or spec == "default":
        path = default_checkpoint_path()
        if not path.exists():
            raise CheckpointError(f"no bundled GAN checkpoint at {path}; train one with 'mmreg train' "
                                  f"or use the 'none' translator")
    elif spec == "none":
        return NoneTranslator()
    else:
        path = pathlib.Path(spec)
    dev = resolve_device(device)
    model, meta = load_checkpoint(path, dev)
    return GanTranslator(model, meta, path, dev)


# ----------------------------------------------------------------------------- CLI: mmreg convert

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="input NIfTI stack (.nii/.nii.gz)")
    parser.add_argument("--direction", required=True, choices=DIRECTIONS)
    parser.add_argument("--out", required=True, help="output NIfTI path (same grid as the input)")
    parser.add_argument("--checkpoint", default="default",
                        help="'default' (bundled), 'none' (normalisation only) or a .safetensors path")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    add_progress_argument(parser)


def run_cli(args) -> int:
    vol = load_volume(args.input)
    tr = load_translator(args.checkpoint, args.device)
    out = tr.convert(vol, args.direction, progress=progress_from_args(args), batch_size=args.batch_size)
    save_volume(out, args.out)
    print(f"{args.direction} with {tr.name}: wrote {args.out}")
    return 0

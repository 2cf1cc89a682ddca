"""Realistic thick-slice coronal/axial pairs with a known ground-truth transform.

From an isotropic co-registered pair (ceT1, T2, optional labels) this renders

* a **coronal** stack (slice normal ~A): in-plane 0.5-1 mm, 2-5 mm slices, 12-24 slices;
* an **axial** stack (slice normal ~S): in-plane 0.25-0.5 mm, 2-5 mm slices, 22-52 slices;

each tilted up to ``max_tilt_deg / 2`` off its anatomical plane (so up to ``max_tilt_deg`` off
perpendicular to each other), with slice-profile averaging (a box profile sampled
``profile_samples`` times across the slice thickness, not point sampling), optional slice gaps,
per-slice motion, a smooth multiplicative bias field and Rician noise. The coronal stack covers a
larger superior-inferior extent than the axial slab, so its field of view sticks out of the axial one.

Finally a random rigid offset ``T`` is written into the coronal header (its affine becomes
``T @ A_true``): the true moving->fixed transform is ``inv(T)``, stored as the ground truth.
Labels are rendered by nearest neighbour at the slice centres on both grids.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from MultimodalRegistrationLib import geometry
from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.volume import Volume, load_volume, save_volume, atomic_write

CORONAL_DIRS = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]).T   # i -> L, j -> S, k -> A (right-handed)
AXIAL_DIRS = np.eye(3)                                                 # i -> R, j -> A, k -> S


@dataclass
class SimParams:
    """Ranges (lo, hi) drawn uniformly per case. Defaults follow the paper's data description."""

    cor_inplane_mm: tuple = (0.5, 1.0)
    cor_slice_mm: tuple = (2.0, 5.0)
    cor_slices: tuple = (12, 24)
    cor_fov_mm: tuple = (180.0, 200.0)      # in-plane extent (R and S) of the coronal stack
    ax_inplane_mm: tuple = (0.25, 0.5)
    ax_slice_mm: tuple = (2.0, 5.0)
    ax_slices: tuple = (22, 52)
    ax_fov_mm: tuple = (190.0, 210.0)       # in-plane extent (R and A) of the axial stack
    ax_max_extent_mm: float = 110.0         # cap on the axial slab thickness so the coronal FOV sticks out
    max_tilt_deg: float = 5.0
    header_rot_deg: float = 5.0             # max rotation of the header offset (ground truth)
    header_shift_mm: float = 10.0           # max translation of the header offset
    slice_gap_fraction: tuple = (0.0, 0.2)  # gap as a fraction of the slice spacing
    slice_motion_mm: float = 0.3            # std of per-slice in-plane motion
    noise_fraction: tuple = (0.01, 0.04)    # Rician noise sigma / 99th percentile
    bias_strength: tuple = (0.0, 0.25)      # peak log-amplitude of the bias field
    profile_samples: int = 5
    center_jitter_mm: float = 8.0           # random offset of the slabs' centres from the brain centre


PRESETS = {
    "paper": SimParams(),
    # Same geometry ranges but coarser in-plane sampling: for tests and quick benchmarks.
    "fast": SimParams(cor_inplane_mm=(1.0, 1.0), ax_inplane_mm=(1.0, 1.0), cor_fov_mm=(170.0, 180.0),
                      ax_fov_mm=(180.0, 190.0), profile_samples=3),
    # The benchmark's setting: paper-like slices, in-plane at the lower-resolution end of the ranges.
    "bench": SimParams(cor_inplane_mm=(0.8, 1.0), ax_inplane_mm=(0.5, 0.5), ax_fov_mm=(180.0, 190.0),
                       ax_slices=(22, 40)),
}


@dataclass
class SourceCase:
    """An isotropic, co-registered pair in one world (and optional labels on the same grid)."""

    name: str
    cet1: Volume
    t2: Volume
    labels: Volume | None = None


@dataclass
class SimCase:
    coronal_cet1: Volume
    coronal_t2: Volume          # same grid as coronal_cet1, rendered from T2 (monomodal tests)
    axial_t2: Volume
    axial_cet1: Volume          # same grid as axial_t2
    coronal_labels: Volume | None
    axial_labels: Volume | None
    moving_to_fixed: np.ndarray  # ground truth: coronal header world -> axial world (RAS)
    meta: dict = field(default_factory=dict)


def _rand_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return geometry.rotvec_matrix(axis * np.radians(rng.uniform(0, max_deg)))


def _u(rng, rng_pair):
    lo, hi = rng_pair
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _ui(rng, rng_pair):
    lo, hi = rng_pair
    return int(rng.integers(lo, hi + 1))


def stack_affine(center: np.ndarray, dirs: np.ndarray, spacing, shape) -> np.ndarray:
    """IJK->RAS affine of a grid with direction columns ``dirs`` centred on ``center``."""
    A = np.eye(4)
    A[:3, :3] = dirs * np.asarray(spacing, dtype=np.float64)
    c_ijk = (np.asarray(shape, dtype=np.float64) - 1) / 2
    A[:3, 3] = np.asarray(center) - A[:3, :3] @ c_ijk
    return A


def render_stack(src: Volume, shape, affine: np.ndarray, thickness_mm: float, samples: int,
                 motion: np.ndarray | None = None, order: int = 1) -> np.ndarray:
    """Thick-slice rendering: each voxel averages ``samples`` points across the slice thickness
    (box profile along the k axis). ``motion`` (n_slices, 3) adds a per-slice world shift."""
    shape = tuple(int(s) for s in shape)
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    offsets = np.linspace(-thickness_mm / 2, thickness_mm / 2, samples + 2)[1:-1] if samples > 1 else np.zeros(1)
    out = np.zeros(shape, dtype=np.float32)
    for k in range(shape[2]):
        acc = np.zeros(shape[:2] + (1,), dtype=np.float32)
        for d in offsets:
            A = affine.copy()
            A[:3, 3] = affine[:3, 3] + affine[:3, 2] * k + normal * d
            if motion is not None:
                A[:3, 3] += motion[k]
            acc += geometry.resample(src, shape[:2] + (1,), A, order=order)
        out[:, :, k] = acc[:, :, 0] / len(offsets)
    return out


def render_labels(labels: Volume, shape, affine: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if motion is None:
        return geometry.resample(labels, shape, affine, order=0, dtype=np.int32)
    out = np.zeros(shape, dtype=np.int32)
    for k in range(shape[2]):
        A = affine.copy()
        A[:3, 3] = affine[:3, 3] + affine[:3, 2] * k + motion[k]
        out[:, :, k] = geometry.resample(labels, shape[:2] + (1,), A, order=0, dtype=np.int32)[:, :, 0]
    return out


def _bias_field(shape, affine, rng, strength: float) -> np.ndarray:
    if strength <= 0:
        return np.ones(shape, dtype=np.float32)
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    xyz = idx @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    xyz = (xyz - xyz.mean(0)) / 100.0
    coef = rng.normal(size=(3,)) * strength
    coef2 = rng.normal(size=(3,)) * strength * 0.5
    log = xyz @ coef + (xyz ** 2) @ coef2
    return np.exp(log).reshape(shape).astype(np.float32)


def _add_noise(img: np.ndarray, rng, sigma: float) -> np.ndarray:
    n1 = rng.normal(scale=sigma, size=img.shape).astype(np.float32)
    n2 = rng.normal(scale=sigma, size=img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2 ** 2).astype(np.float32)


def brain_center(vol: Volume) -> np.ndarray:
    """RAS centre of mass of the voxels above 10% of the 99th percentile."""
    arr = np.asarray(vol.array, dtype=np.float32)
    m = arr > 0.1 * np.percentile(arr, 99)
    ijk = np.argwhere(m).mean(axis=0)
    return vol.voxel_to_world(ijk[None])[0]


def simulate_case(source: SourceCase, seed: int = 0, params: SimParams | str = "paper") -> SimCase:
    """Draws one simulated coronal/axial pair with known ground truth from ``source``."""
    p = PRESETS[params] if isinstance(params, str) else params
    rng = np.random.default_rng(seed)
    c0 = brain_center(source.t2)

    # Coronal stack: slices ~ along A, in-plane R and S.
    cor_sp_in = _u(rng, p.cor_inplane_mm)
    cor_sp_sl = _u(rng, p.cor_slice_mm)
    cor_n = _ui(rng, p.cor_slices)
    cor_fov = _u(rng, p.cor_fov_mm)
    cor_shape = (int(round(cor_fov / cor_sp_in)), int(round(cor_fov / cor_sp_in)), cor_n)
    cor_dirs = _rand_rotation(rng, p.max_tilt_deg / 2) @ CORONAL_DIRS
    cor_center = c0 + rng.uniform(-1, 1, 3) * p.center_jitter_mm * np.array([0.3, 1.0, 0.3])
    A_cor = stack_affine(cor_center, cor_dirs, (cor_sp_in, cor_sp_in, cor_sp_sl), cor_shape)

    # Axial slab: slices ~ along S, in-plane R and A; thinner in S than the coronal FOV.
    ax_sp_in = _u(rng, p.ax_inplane_mm)
    ax_sp_sl = _u(rng, p.ax_slice_mm)
    ax_n = _ui(rng, p.ax_slices)
    ax_n = max(3, min(ax_n, int(p.ax_max_extent_mm // ax_sp_sl)))
    ax_fov = _u(rng, p.ax_fov_mm)
    ax_shape = (int(round(ax_fov / ax_sp_in)), int(round(ax_fov / ax_sp_in)), ax_n)
    ax_dirs = _rand_rotation(rng, p.max_tilt_deg / 2) @ AXIAL_DIRS
    ax_center = c0 + rng.uniform(-1, 1, 3) * p.center_jitter_mm * np.array([0.3, 0.3, 1.0])
    A_ax = stack_affine(ax_center, ax_dirs, (ax_sp_in, ax_sp_in, ax_sp_sl), ax_shape)

    gap = _u(rng, p.slice_gap_fraction)
    cor_motion = rng.normal(scale=p.slice_motion_mm, size=(cor_n, 3)) * np.array([1, 0, 1])  # in-plane R/S
    ax_motion = rng.normal(scale=p.slice_motion_mm, size=(ax_n, 3)) * np.array([1, 1, 0])   # in-plane R/A
    if p.slice_motion_mm <= 0:
        cor_motion = ax_motion = None

    def render(vol, shape, A, sp_sl, motion):
        return render_stack(vol, shape, A, sp_sl * (1 - gap), p.profile_samples, motion)

    cor_ce = render(source.cet1, cor_shape, A_cor, cor_sp_sl, cor_motion)
    cor_t2 = render(source.t2, cor_shape, A_cor, cor_sp_sl, cor_motion)
    ax_t2 = render(source.t2, ax_shape, A_ax, ax_sp_sl, ax_motion)
    ax_ce = render(source.cet1, ax_shape, A_ax, ax_sp_sl, ax_motion)

    def corrupt(img, shape, A):
        ref = float(np.percentile(img, 99)) or 1.0
        img = img * _bias_field(shape, A, rng, _u(rng, p.bias_strength))
        return _add_noise(img, rng, _u(rng, p.noise_fraction) * ref)

    cor_ce = corrupt(cor_ce, cor_shape, A_cor)
    cor_t2 = corrupt(cor_t2, cor_shape, A_cor)
    ax_t2 = corrupt(ax_t2, ax_shape, A_ax)
    ax_ce = corrupt(ax_ce, ax_shape, A_ax)

    cor_lab = ax_lab = None
    if source.labels is not None:
        cor_lab = render_labels(source.labels, cor_shape, A_cor, cor_motion)
        ax_lab = render_labels(source.labels, ax_shape, A_ax, ax_motion)

    # Header offset: the coronal file claims its voxels sit at T @ (true position).
    R_off = _rand_rotation(rng, p.header_rot_deg)
    t_off = rng.normal(size=3)
    t_off = t_off / np.linalg.norm(t_off) * rng.uniform(0, p.header_shift_mm)
    T = np.eye(4)
    T[:3, :3] = R_off
    T[:3, 3] = cor_center - R_off @ cor_center + t_off
    A_cor_hdr = T @ A_cor
    truth = np.linalg.inv(T)

    meta = {
        "source": source.name, "seed": int(seed),
        "coronal": {"shape": list(cor_shape), "spacing": [cor_sp_in, cor_sp_in, cor_sp_sl]},
        "axial": {"shape": list(ax_shape), "spacing": [ax_sp_in, ax_sp_in, ax_sp_sl]},
        "slice_gap_fraction": gap,
        "header_offset_rotation_deg": geometry.rotation_angle_deg(T),
        "header_offset_translation_mm": float(np.linalg.norm(t_off)),
        "params": asdict(p),
    }
    mk = lambda arr, A: Volume(arr, A)  # noqa: E731
    return SimCase(
        coronal_cet1=mk(cor_ce, A_cor_hdr), coronal_t2=mk(cor_t2, A_cor_hdr),
        axial_t2=mk(ax_t2, A_ax), axial_cet1=mk(ax_ce, A_ax),
        coronal_labels=None if cor_lab is None else mk(cor_lab, A_cor_hdr),
        axial_labels=None if ax_lab is None else mk(ax_lab, A_ax),
        moving_to_fixed=truth, meta=meta)


CASE_FILES = {
    "coronal_cet1": "coronal_ceT1.nii.gz", "coronal_t2": "coronal_T2.nii.gz",
    "axial_t2": "axial_T2.nii.gz", "axial_cet1": "axial_ceT1.nii.gz",
    "coronal_labels": "coronal_labels.nii.gz", "axial_labels": "axial_labels.nii.gz",
}


def save_case(case: SimCase, folder: str | os.PathLike, prefix: str = "") -> Path:
    """Writes the case's volumes and ``ground_truth.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for attr, fname in CASE_FILES.items():
        vol = getattr(case, attr)
        if vol is None:
            continue
        dtype = np.uint16 if "labels" in attr else np.float32
        save_volume(vol, folder / f"{prefix}{fname}", dtype=dtype)
    gt = {"moving_to_fixed_ras": case.moving_to_fixed.tolist(), "meta": case.meta}
    atomic_write(folder / f"{prefix}ground_truth.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(gt, indent=2)), suffix=".json")
    return folder


# ----------------------------------------------------------------------------- sources

def default_data_root() -> Path:
    """``../shared/data`` relative to the project root (override with MMREG_DATA)."""
    env = os.environ.get("MMREG_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


BRATS_CASES = {
    "BraTSorch-case": ("brats/BraTSorch-case_sri24", "seg_algo"),
    "BraTS-MET-00110": ("brats/BraTS-MET-00110-000_sri24", "seg_aurora_algo"),
    "TCGA-FG-6692": ("brats/TCGA-FG-6692_sri24", "seg_fusion_algo"),
    "TCGA-DU-7294": ("brats/TCGA-DU-7294_sri24", "seg_fusion_algo"),
}


def _normalise(vol: Volume) -> Volume:
    arr = np.asarray(vol.array, dtype=np.float32)
    hi = float(np.percentile(arr[arr > 0], 99.5)) if np.any(arr > 0) else 1.0
    return vol.with_array(np.clip(arr / hi, 0, 1.5) * 1000.0)


#: Other co-registered real T1/T2 pairs of ``../shared/data``: folder, T1 file, T2 file (no labels).
#: ``stroke``: one chronic-stroke patient (3 T, MIT licence), a non-enhanced T1: another disease and scanner.
OTHER_SOURCES = {
    "stroke": ("stroke", "T1.nii.gz", "T2.nii.gz"),
}
#: Every source name :func:`load_brats_source` accepts.
ALL_SOURCES = tuple(BRATS_CASES) + tuple(OTHER_SOURCES)


def load_brats_source(name: str, data_root: str | os.PathLike | None = None) -> SourceCase:
    """One of the co-registered real T1(ce)/T2 pairs of ``../shared/data`` (intensities scaled to ~0..1000):
    the BraTS/TCIA cases of :data:`BRATS_CASES` or one of :data:`OTHER_SOURCES`."""
    root = Path(data_root) if data_root else default_data_root()
    if name in OTHER_SOURCES:
        sub, t1, t2 = OTHER_SOURCES[name]
        d = root / sub
        if not d.exists():
            raise InputError(f"source data folder {d} not found (set MMREG_DATA)")
        return SourceCase(name=name, cet1=_normalise(load_volume(d / t1)), t2=_normalise(load_volume(d / t2)))
    if name not in BRATS_CASES:
        raise InputError(f"unknown source case {name!r}; choose from {sorted(ALL_SOURCES)}")
    sub, seg = BRATS_CASES[name]
    d = root / sub
    if not d.exists():
        raise InputError(f"source data folder {d} not found (set MMREG_DATA)")
    return SourceCase(name=name, cet1=_normalise(load_volume(d / "t1c.nii.gz")),
                      t2=_normalise(load_volume(d / "t2.nii.gz")),
                      labels=load_volume(d / f"{seg}.nii.gz", labels=True))


# ----------------------------------------------------------------------------- CLI: mmreg simulate

def add_arguments(p) -> None:
    p.add_argument("--source", help="a BraTS case name from ../shared/data (see simulate.BRATS_CASES)")
    p.add_argument("--cet1", help="isotropic ceT1 volume (instead of --source)")
    p.add_argument("--t2", help="isotropic T2 volume co-registered with --cet1")
    p.add_argument("--labels", help="labels on the --cet1 grid")
    p.add_argument("--preset", choices=("paper", "fast", "bench"), default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--header-rot", type=float, help="max rotation (deg) of the header offset")
    p.add_argument("--header-shift", type=float, help="max translation (mm) of the header offset")
    p.add_argument("--out", required=True)


def run_cli(args) -> int:
    if args.source:
        src = load_brats_source(args.source)
    else:
        if not (args.cet1 and args.t2):
            raise InputError("give --source NAME, or --cet1 and --t2 (co-registered isotropic volumes)")
        src = SourceCase(name=Path(args.cet1).name, cet1=load_volume(args.cet1), t2=load_volume(args.t2),
                         labels=load_volume(args.labels, labels=True) if args.labels else None)
    params = PRESETS[args.preset]
    if args.header_rot is not None:
        params = replace(params, header_rot_deg=args.header_rot)
    if args.header_shift is not None:
        params = replace(params, header_shift_mm=args.header_shift)
    case = simulate_case(src, seed=args.seed, params=params)
    save_case(case, args.out)
    print(f"simulated case (seed {args.seed}, preset {args.preset}) -> {args.out}")
    return 0


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m MultimodalRegistrationLab.simulate",
                                     description="make a simulated thick-slice case with known ground truth")
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

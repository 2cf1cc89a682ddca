"""Training data for the ceT1 <-> T2 GAN: real paired BraTS slices + pairs rendered from real anatomy.

Recipe (docs/GAN.md, "Training data"):

1. **Real pairs**: the co-registered BraTS/TCIA t1c/t2 cases of ``../shared/data/brats/*_sri24``
   (skull-stripped), except the held-out evaluation case (default ``TCGA-DU-7294``).
2. **Rendered pairs** from the ICBM152 2009 template shipped inside nilearn's wheel (T1 with head +
   grey/white-matter probability maps, 1 mm): the template is segmented into tissue fractions
   (GM, WM, CSF from the maps; scalp fat, muscle/skin and bone from the head outside the brain by
   T1 intensity; dura as a shell around the intracranial cavity, the superior sagittal sinus on
   its midline, random tubular vessels in the sulcal CSF, the pituitary, and optionally a tumour
   with oedema, an enhancing rim and a necrotic core). Each tissue gets literature T1/T2/PD values
   (randomised +-10 %), gadolinium shortens T1 (``1/T1' = 1/T1 + r1*C``, r1 = 4 /s/mM) in vessels,
   sinus, dura, pituitary and enhancing tumour, and both contrasts are rendered with the spin-echo
   equation ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` with random TR/TE (ceT1: TR 400-700 ms,
   TE 8-20 ms; T2: TR 2500-6000 ms, TE 80-120 ms), partial-volume mixing, tissue texture, a smooth
   multiplicative bias field, Rician noise and random blur (resolution).
3. **Slices**: mostly coronal (70 %), also axial and sagittal (15 % each), random square field of
   view 150-240 mm (pixel 1.2-1.9 mm at 128 px; 0.5-1 mm in-plane coronal stacks are resampled to
   this by the converter too), random in-plane flips/transpositions (stacks come in any in-plane
   orientation), each volume normalised as in ``translate.robust_range`` (per volume).

``python -m MultimodalRegistrationLab.synth --out DIR`` (or ``mmreg train --build-data``)
regenerates the training set deterministically from a seed.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from MultimodalRegistrationLib.translate import normalise01, to_square, volume_scale

from .simulate import default_data_root

HOLDOUT_CASE = "TCGA-DU-7294"
BRATS_CASES = ("BraTSorch-case", "BraTS-MET-00110", "TCGA-FG-6692", "TCGA-DU-7294")

# Literature relaxation values (ms) and proton density, roughly 1.5-3 T (Stanisz 2005, Bojorquez 2017,
# de Bazelaire 2004). Gd concentration (mM) for tissues that enhance.
TISSUES = {
    #            T1     T2    PD    Gd (mM) range
    "wm":      (750.0,  75.0, 0.69, (0.0, 0.0)),
    "gm":      (1250.0, 95.0, 0.80, (0.0, 0.0)),
    "csf":     (4000.0, 1800.0, 1.0, (0.0, 0.0)),
    "fat":     (350.0,  80.0, 0.90, (0.0, 0.0)),
    "soft":    (1100.0, 45.0, 0.70, (0.0, 0.05)),    # muscle / skin
    "bone":    (500.0,  5.0,  0.08, (0.0, 0.0)),
    "dura":    (1000.0, 60.0, 0.60, (0.3, 0.7)),
    "vessel":  (1500.0, 200.0, 0.85, (1.5, 4.0)),    # flow void on T2 handled below
    "pituitary": (900.0, 80.0, 0.75, (0.5, 1.0)),
    "edema":   (1400.0, 180.0, 0.85, (0.0, 0.05)),
    "enhancing": (1300.0, 120.0, 0.80, (0.4, 1.2)),
    "necrosis": (2500.0, 400.0, 0.90, (0.0, 0.0)),
}
R1_GD = 4.0  # /s/mM


def nilearn_data_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def load_brats_pair(case: str, root: Path | None = None):
    """(t1c, t2, affine) float32 arrays of a co-registered BraTS case."""
    import nibabel as nib

    root = Path(root) if root else default_data_root()
    d = root / "brats" / f"{case}_sri24"
    if case == "BraTS-MET-00110":
        d = root / "brats" / "BraTS-MET-00110-000_sri24"
    a = nib.load(str(d / "t1c.nii.gz"))
    b = nib.load(str(d / "t2.nii.gz"))
    return (np.asarray(a.dataobj, dtype=np.float32), np.asarray(b.dataobj, dtype=np.float32),
            np.asarray(a.affine, dtype=np.float64))


# ----------------------------------------------------------------------------- tissue model from MNI152

def mni_tissues(step: int = 1):
    """Fractions of the base tissues on the ICBM152 2009 1 mm grid (every ``step``-th voxel), plus the affine."""
    import nibabel as nib

    d = nilearn_data_dir()
    t1img = nib.load(str(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    t1 = np.asarray(t1img.dataobj, dtype=np.float32) / 255.0
    gm = np.asarray(nib.load(str(d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).dataobj, np.float32) / 255.0
    wm = np.asarray(nib.load(str(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).dataobj, np.float32) / 255.0
    aff = np.asarray(t1img.affine, dtype=np.float64)
    if step > 1:
        t1, gm, wm = t1[::step, ::step, ::step], gm[::step, ::step, ::step], wm[::step, ::step, ::step]
        aff = aff.copy()
        aff[:3, :3] *= step
    t1n = t1 / np.percentile(t1[t1 > 0.05], 99)
    # nilearn's template is brain-only: take the scalp, skull and face from the MNI152 T1 *with head*
    # (../shared/data/real/MNI152_T1_2mm.nii.gz), resampled onto the 1 mm grid.
    head_file = default_data_root() / "real" / "MNI152_T1_2mm.nii.gz"
    if head_file.exists():
        himg = nib.load(str(head_file))
        h = np.asarray(himg.dataobj, dtype=np.float32)
        m = np.linalg.inv(himg.affine) @ aff
        coords = np.indices(t1.shape, dtype=np.float32).reshape(3, -1)
        coords = (m[:3, :3] @ coords + m[:3, 3:4]).astype(np.float32)
        h1 = ndi.map_coordinates(h, coords, order=1, mode="constant").reshape(t1.shape)
        h1 /= np.percentile(h1[h1 > 0.05 * h1.max()], 99)
        t1n = np.where(t1n > 0.05, np.maximum(t1n, 0), h1)
        extra_src = h1
    else:
        extra_src = t1n
    head = ndi.binary_fill_holes(ndi.binary_closing(extra_src > 0.1, iterations=2))
    brain = gm + wm
    icv = ndi.binary_fill_holes(ndi.binary_closing(brain > 0.3, iterations=3))
    icv = ndi.binary_dilation(icv, iterations=1) & head
    csf = np.clip(1.0 - brain, 0.0, 1.0) * icv
    gm, wm = gm * icv, wm * icv
    extra = (head & ~icv).astype(np.float32)
    fat = extra / (1.0 + np.exp(-(extra_src - 0.6) / 0.05))
    bone = extra / (1.0 + np.exp(-(0.25 - extra_src) / 0.05))
    soft = np.clip(extra - fat - bone, 0.0, 1.0)
    shell = ndi.binary_dilation(icv, iterations=1) & ~ndi.binary_erosion(icv, iterations=1)
    return {"t1n": t1n, "gm": gm, "wm": wm, "csf": csf, "fat": fat, "bone": bone, "soft": soft,
            "icv": icv, "head": head, "shell": shell}, aff


def _smooth_noise(shape, rng, sigma):
    """Low-resolution Gaussian noise smoothed and upsampled (cheap large-scale random fields)."""
    f = 4
    small = rng.standard_normal(tuple(max(2, s // f) for s in shape)).astype(np.float32)
    small = ndi.gaussian_filter(small, sigma / f)
    small /= small.std() + 1e-6
    return ndi.zoom(small, [s / t for s, t in zip(shape, small.shape)], order=1)[: shape[0], : shape[1], : shape[2]]


def render_mni_pair(rng: np.random.Generator, base=None, contrast_jitter: float = 0.0):
    """One randomised (ceT1, T2) pair on the MNI 1 mm grid, plus a description dict.

    ``contrast_jitter`` > 0 adds SynthSeg-style contrast randomisation on top of the physical
    model: every tissue's ceT1 signal is multiplied by ``exp(N(0, contrast_jitter))`` (its T2 signal by
    ``exp(N(0, contrast_jitter / 3))``, so that the target keeps T2's tissue order: CSF brightest) and
    the ceT1 gets a random gamma ``exp(N(0, contrast_jitter))``. 0 = the plain physical render."""
    if base is None:
        base = mni_tissues()
    t, affine = base
    shape = t["gm"].shape
    frac = {k: t[k].copy() for k in ("wm", "gm", "csf", "fat", "soft", "bone")}
    for k in ("dura", "vessel", "pituitary", "edema", "enhancing", "necrosis"):
        frac[k] = np.zeros(shape, np.float32)
    ijk = np.indices(shape, dtype=np.float32)
    xyz = [affine[r, 0] * ijk[0] + affine[r, 1] * ijk[1] + affine[r, 2] * ijk[2] + affine[r, 3] for r in range(3)]

    def take(mask_frac, name):
        """Move ``mask_frac`` (0..1) of every voxel from the base tissues to tissue ``name``."""
        m = np.clip(mask_frac, 0, 1).astype(np.float32)
        for k in ("wm", "gm", "csf", "fat", "soft", "bone", "dura", "vessel", "edema", "enhancing", "necrosis",
                  "pituitary"):
            if k != name:
                frac[k] *= (1.0 - m)
        frac[name] = frac[name] * (1.0 - m) + m

    # dura: shell around the intracranial cavity; superior sagittal sinus on its upper midline
    take(t["shell"] * rng.uniform(0.4, 0.8), "dura")
    sinus = t["shell"] & (np.abs(xyz[0]) < rng.uniform(3, 6)) & (xyz[2] > 0)
    take(sinus.astype(np.float32), "vessel")
    # vessels: level set of a smooth random field inside the sulcal CSF / at the brain surface
    g = _smooth_noise(shape, rng, sigma=rng.uniform(3, 6))
    width = rng.uniform(0.05, 0.12)
    vessel = (np.abs(g) < width) & (t["csf"] > 0.3) & t["icv"]
    take(vessel.astype(np.float32) * rng.uniform(0.5, 1.0), "vessel")
    # pituitary (sella turcica) with jitter
    c = np.array([0.0, 2.0, -32.0]) + rng.normal(0, 2, 3)
    r = rng.uniform(4, 7, 3) * np.array([1.0, 0.8, 0.6])
    pit = sum(((xyz[i] - c[i]) / r[i]) ** 2 for i in range(3)) < 1.0
    take(pit.astype(np.float32), "pituitary")
    desc = {"tumour": False}
    if rng.random() < 0.6:
        cand = np.argwhere(t["wm"] > 0.8)
        ctr = cand[rng.integers(len(cand))].astype(np.float32)
        rad = rng.uniform(6, 20)
        d = np.sqrt(sum((ijk[i] - ctr[i]) ** 2 for i in range(3))) * (1 + 0.15 * _smooth_noise(shape, rng, 4))
        inside_icv = t["icv"].astype(np.float32)
        take((d < rad * rng.uniform(1.6, 2.4)) * inside_icv * rng.uniform(0.6, 1.0), "edema")
        take((d < rad) * inside_icv, "enhancing")
        if rad > 9 and rng.random() < 0.6:
            take((d < rad - rng.uniform(2, 4)) * inside_icv, "necrosis")
        desc = {"tumour": True, "radius_mm": float(rad)}

    te1, tr1 = rng.uniform(8, 20), rng.uniform(400, 700)
    te2, tr2 = rng.uniform(80, 120), rng.uniform(2500, 6000)
    s1 = np.zeros(shape, np.float32)
    s2 = np.zeros(shape, np.float32)
    for name, (T1, T2, PD, gd) in TISSUES.items():
        f = frac[name]
        if not f.any():
            continue
        j = rng.uniform(0.9, 1.1, 3)
        T1, T2, PD = T1 * j[0], T2 * j[1], PD * j[2]
        c = rng.uniform(*gd)
        T1c = 1.0 / (1.0 / T1 + R1_GD * c / 1000.0)
        sig1 = PD * (1 - np.exp(-tr1 / T1c)) * np.exp(-te1 / T2)
        sig2 = PD * (1 - np.exp(-tr2 / T1)) * np.exp(-te2 / T2)
        if name == "vessel":
            sig2 *= rng.uniform(0.05, 0.4)  # flow void on T2
        if contrast_jitter > 0:
            sig1 *= float(np.exp(rng.normal(0.0, contrast_jitter)))
            sig2 *= float(np.exp(rng.normal(0.0, contrast_jitter / 3.0)))
        s1 += f * sig1
        s2 += f * sig2
    tex = 1.0 + rng.uniform(0.01, 0.04) * _smooth_noise(shape, rng, 1.5)
    s1 *= tex
    s2 *= tex
    if contrast_jitter > 0:
        g = float(np.exp(rng.normal(0.0, contrast_jitter)))
        top = float(np.percentile(s1[t["head"]], 99.5)) or 1.0
        s1 = (np.clip(s1 / top, 0, None) ** g * top).astype(np.float32)
        desc["contrast_jitter"] = float(contrast_jitter)
        desc["gamma_ceT1"] = g
    out = []
    for s in (s1, s2):
        blur = rng.uniform(0.0, 1.0)
        if blur > 0.2:
            s = ndi.gaussian_filter(s, blur)
        bias = np.exp(rng.uniform(0.0, 0.25) * _smooth_noise(shape, rng, 40))
        s = s * bias
        sigma = rng.uniform(0.005, 0.03) * np.percentile(s[t["head"]], 99)
        s = np.sqrt((s + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
        out.append(s.astype(np.float32))
    desc.update(TR_T1=tr1, TE_T1=te1, TR_T2=tr2, TE_T2=te2)
    return out[0], out[1], affine, desc


# ----------------------------------------------------------------------------- slices

PLANE_PROBS = (("coronal", 0.7), ("axial", 0.15), ("sagittal", 0.15))
_PLANE_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def _plane_axis(affine: np.ndarray, plane: str) -> int:
    """Voxel axis whose direction is closest to the plane's normal (R, A or S)."""
    d = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(d[_PLANE_WORLD_AXIS[plane], :])))


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of a 2D array (k in 0..7)."""
    if k & 4:
        a = a.T
    if k & 1:
        a = a[::-1]
    if k & 2:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def extract_slices(a: np.ndarray, b: np.ndarray, affine: np.ndarray, n: int, rng: np.random.Generator,
                   size: int = 128, planes=PLANE_PROBS, augment: bool = True, min_fg: float = 0.08,
                   norm: dict | None = None):
    """``n`` paired slices (size x size, 0..1) from a co-registered pair of volumes, each volume
    normalised as ``translate.volume_scale`` with ``norm`` (None = the old percentile one) does."""
    import torch  # noqa: F401  (to_square returns a tensor)

    sp3 = np.linalg.norm(affine[:3, :3], axis=0)
    lo_a, hi_a = volume_scale(a, sp3, norm, "A")
    lo_b, hi_b = volume_scale(b, sp3, norm, "B")
    an, bn = normalise01(a, lo_a, hi_a), normalise01(b, lo_b, hi_b)
    names = [p for p, _ in planes]
    probs = np.array([w for _, w in planes], dtype=np.float64)
    probs /= probs.sum()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    xa, xb = [], []
    tries = 0
    while len(xa) < n and tries < n * 20:
        tries += 1
        plane = names[rng.choice(len(names), p=probs)]
        ax = _plane_axis(affine, plane)
        # foreground of both (a noisy background can pass 0.05 on one contrast outside the head)
        fg = ((an > 0.05) & (bn > 0.05)).sum(axis=tuple(i for i in range(3) if i != ax))
        valid = np.flatnonzero(fg > min_fg * fg.max())
        if valid.size == 0:
            continue
        idx = int(valid[rng.integers(valid.size)])
        sa = np.take(an, idx, axis=ax)
        sb = np.take(bn, idx, axis=ax)
        if (sa > 0.05).mean() < 0.03 or (sb > 0.05).mean() < 0.03:
            continue
        # random square field of view (mm) around the foreground centre, with jitter
        sp = float(np.mean([spacing[i] for i in range(3) if i != ax]))
        fov = rng.uniform(150.0, 240.0) / sp
        m = np.argwhere(sa > 0.05)
        ctr = m.mean(axis=0) + rng.normal(0, 6, 2)
        half = fov / 2
        r0, c0 = int(round(ctr[0] - half)), int(round(ctr[1] - half))
        L = int(round(fov))
        pa = np.zeros((L, L), np.float32)
        pb = np.zeros((L, L), np.float32)
        rs, cs = max(0, r0), max(0, c0)
        re, ce = min(sa.shape[0], r0 + L), min(sa.shape[1], c0 + L)
        pa[rs - r0:re - r0, cs - c0:ce - c0] = sa[rs:re, cs:ce]
        pb[rs - r0:re - r0, cs - c0:ce - c0] = sb[rs:re, cs:ce]
        if augment:
            k = int(rng.integers(8))
            pa, pb = dihedral(pa, k), dihedral(pb, k)
        ta, _ = to_square(pa[None] * 2 - 1, size)
        tb, _ = to_square(pb[None] * 2 - 1, size)
        xa.append(((ta[0, 0].numpy() + 1) / 2).clip(0, 1))
        xb.append(((tb[0, 0].numpy() + 1) / 2).clip(0, 1))
    return np.stack(xa).astype(np.float32), np.stack(xb).astype(np.float32)


def resample_isotropic(a: np.ndarray, affine: np.ndarray, spacing: float = 1.0):
    """``a`` resampled (linear) to ``max(spacing, finest voxel size)`` mm isotropic voxels, with its affine:
    the slice extraction treats a slice's pixels as square, so anisotropic volumes are resampled first."""
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    iso = max(float(spacing), float(sp.min()))
    if np.allclose(sp, iso, rtol=1e-3):
        return a, affine
    zoom = sp / iso
    out = ndi.zoom(a, zoom, order=1, grid_mode=True, mode="grid-constant").astype(np.float32)
    aff = affine.copy()
    aff[:3, :3] = affine[:3, :3] / zoom
    aff[:3, 3] = affine[:3, :3] @ (0.5 / zoom - 0.5) + affine[:3, 3]
    return out, aff


def skull_strip(a: np.ndarray, b: np.ndarray, base) -> tuple[np.ndarray, np.ndarray]:
    """A rendered pair reduced to the intracranial volume (as skull-stripped data are), with a 1 mm soft edge."""
    m = ndi.gaussian_filter(base[0]["icv"].astype(np.float32), 0.7)
    return a * m, b * m


def build_dataset(out: os.PathLike, *, size: int = 128, n_synth: int = 10, slices_per_synth: int = 48,
                  slices_per_real: int = 96, holdout: str = HOLDOUT_CASE, seed: int = 0,
                  strip_fraction: float = 0.5, root: Path | None = None, log=print, norm: dict | None = None,
                  contrast_jitter: float = 0.0, unpaired_cet1=(), slices_per_unpaired: int = 200,
                  real_cases=None) -> Path:
    """Writes ``out`` (.npz): A (ceT1) and B (T2) slices in 0..1 (float16), ``source`` per slice, recipe JSON.

    ``strip_fraction`` of the renders are skull-stripped (brain-only), so that the translator also sees
    brain-only heads, as in skull-stripped research data and brain-only crops. ``norm``: the
    normalisation record (``translate.tissue_peak_normalisation()``; None = the old percentile one).
    ``unpaired_cet1``: ceT1 NIfTI files without a T2 (e.g. ``tcia_vs``): ``slices_per_unpaired`` slices
    each go to ``A_unpaired``, used by the trainer for the adversarial/cycle losses only.
    ``real_cases``: the BraTS training cases (default: all but ``holdout``)."""
    rng = np.random.default_rng(seed)
    t0 = time.time()
    A, B, src = [], [], []
    root = Path(root) if root else default_data_root()
    real_cases = [c for c in (BRATS_CASES if real_cases is None else real_cases) if c != holdout]
    if (root / "brats").exists():
        for case in real_cases:
            a, b, aff = load_brats_pair(case, root)
            xa, xb = extract_slices(a, b, aff, slices_per_real, rng, size, norm=norm)
            A.append(xa); B.append(xb); src += [f"brats:{case}"] * len(xa)
            log(f"{case}: {len(xa)} slices ({time.time() - t0:.0f}s)")
    else:
        log(f"no BraTS data under {root}; rendered pairs only")
        real_cases = []
    base = mni_tissues()
    descs = []
    for i in range(n_synth):
        a, b, aff, desc = render_mni_pair(rng, base, contrast_jitter)
        desc["skull_stripped"] = bool(rng.random() < strip_fraction)
        if desc["skull_stripped"]:
            a, b = skull_strip(a, b, base)
        xa, xb = extract_slices(a, b, aff, slices_per_synth, rng, size, norm=norm)
        A.append(xa); B.append(xb); src += [f"mni152-render:{i}"] * len(xa)
        descs.append(desc)
        log(f"render {i}: {len(xa)} slices {desc} ({time.time() - t0:.0f}s)")
    U = []
    for f in unpaired_cet1:
        import nibabel as nib

        img = nib.load(str(f))
        u, uaff = resample_isotropic(np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, np.float64))
        xu, _ = extract_slices(u, u, uaff, slices_per_unpaired, rng, size, norm=norm)
        U.append(xu)
        log(f"unpaired ceT1 {Path(f).name}: {len(xu)} slices ({time.time() - t0:.0f}s)")
    recipe = {"size": size, "n_synth": n_synth, "slices_per_synth": slices_per_synth,
              "slices_per_real": slices_per_real, "real_cases": real_cases, "holdout": holdout, "seed": seed,
              "strip_fraction": strip_fraction, "contrast_jitter": contrast_jitter,
              "normalisation": norm or "percentile",
              "unpaired_cet1": [Path(f).name for f in unpaired_cet1], "slices_per_unpaired": slices_per_unpaired,
              "planes": dict(PLANE_PROBS), "renders": descs, "module": "MultimodalRegistrationLab.synth"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.npz")
    extra = {"A_unpaired": np.concatenate(U).astype(np.float16)} if U else {}
    if not A:  # an unpaired-only set
        A, B = [np.zeros((0, size, size), np.float32)], [np.zeros((0, size, size), np.float32)]
    np.savez_compressed(tmp, A=np.concatenate(A).astype(np.float16), B=np.concatenate(B).astype(np.float16),
                        source=np.array(src), recipe=json.dumps(recipe), **extra)
    os.replace(tmp, out)
    log(f"wrote {out}: {sum(len(x) for x in A)} pairs in {time.time() - t0:.0f}s")
    return out


def load_dataset(path: os.PathLike):
    """-> (A, B, sources, recipe) with A/B float32 (N, S, S) in 0..1."""
    with np.load(path, allow_pickle=False) as z:
        return (z["A"].astype(np.float32), z["B"].astype(np.float32), [str(s) for s in z["source"]],
                json.loads(str(z["recipe"])))


def load_unpaired(path: os.PathLike):
    """The unpaired ceT1 slices of a training set (float32 (N, S, S) in 0..1), or None."""
    with np.load(path, allow_pickle=False) as z:
        return z["A_unpaired"].astype(np.float32) if "A_unpaired" in z.files else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Build the GAN training set (real BraTS pairs + MNI152 renders)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-synth", type=int, default=10)
    p.add_argument("--slices-per-synth", type=int, default=48)
    p.add_argument("--slices-per-real", type=int, default=96)
    p.add_argument("--holdout", default=HOLDOUT_CASE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strip-fraction", type=float, default=0.5, help="share of renders made brain-only")
    p.add_argument("--normalisation", choices=("percentile", "tissue-peak"), default="percentile",
                   help="intensity normalisation of the slices (must match the checkpoint's)")
    p.add_argument("--contrast-jitter", type=float, default=0.0, help="SynthSeg-style per-tissue contrast randomisation")
    p.add_argument("--unpaired-cet1", nargs="*", default=[], help="ceT1 NIfTI files without a T2 (unpaired domain A)")
    p.add_argument("--slices-per-unpaired", type=int, default=200)
    p.add_argument("--real-cases", nargs="*", default=None, help="BraTS training cases (default: all but --holdout)")
    a = p.parse_args(argv)
    from MultimodalRegistrationLib.translate import tissue_peak_normalisation

    build_dataset(a.out, size=a.size, n_synth=a.n_synth, slices_per_synth=a.slices_per_synth,
                  slices_per_real=a.slices_per_real, holdout=a.holdout, seed=a.seed,
                  strip_fraction=a.strip_fraction,
                  norm=tissue_peak_normalisation() if a.normalisation == "tissue-peak" else None,
                  contrast_jitter=a.contrast_jitter, unpaired_cet1=a.unpaired_cet1,
                  slices_per_unpaired=a.slices_per_unpaired, real_cases=a.real_cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

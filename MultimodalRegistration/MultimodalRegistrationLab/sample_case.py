"""How the bundled sample case was made (the team's tool; the product only reads the case).

The sample case is made from the ICBM 2009a MNI152 template that ships inside nilearn's wheel
(BSD-3 with the McGill notice; see README credits), never from the research-use patient data:
ceT1 and T2 are rendered from the template's grey/white-matter maps with the spin-echo equation
(see :func:`mni_source`); labels 1 = an enhancing lesion, 2 = ventricles. The thick-slice stacks
are made with :mod:`.simulate` and a known header offset (``sample_ground_truth.json``).
Regenerate with ``python -m MultimodalRegistrationLab.sample_case --make``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from MultimodalRegistrationLib.sample import sample_paths
from MultimodalRegistrationLib.volume import Volume

from . import simulate

SAMPLE_SEED = 11
SAMPLE_PARAMS = simulate.SimParams(cor_inplane_mm=(0.8, 0.8), cor_slice_mm=(3.0, 3.0), cor_slices=(18, 18),
                                   cor_fov_mm=(180.0, 180.0), ax_inplane_mm=(0.5, 0.5), ax_slice_mm=(4.0, 4.0),
                                   ax_slices=(22, 22), ax_fov_mm=(176.0, 176.0), ax_max_extent_mm=90.0,
                                   header_rot_deg=6.0, header_shift_mm=12.0, noise_fraction=(0.015, 0.015))


def mni_source() -> simulate.SourceCase:
    """ceT1/T2/labels rendered from nilearn's MNI152 2009a template (shippable).

    Tissue fractions (GM, WM from the template's maps, CSF as the rest of the intracranial cavity)
    are rendered with the same spin-echo equation and literature T1/T2/PD values as the GAN's
    synthetic training pairs (:mod:`synth`), at mid-range sequence parameters: ceT1 TR 550 ms /
    TE 14 ms with gadolinium in the lesion, T2 TR 4000 ms / TE 100 ms. Labels: 1 = an enhancing
    sellar/suprasellar lesion (a pituitary adenoma stand-in), 2 = the lateral ventricles.
    """
    from scipy import ndimage
    import nibabel as nib

    from .synth import R1_GD, TISSUES, nilearn_data_dir

    d = nilearn_data_dir()
    img = nib.load(str(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    t1 = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    gm = np.asarray(nib.load(str(d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).dataobj, np.float32) / 255
    wm = np.asarray(nib.load(str(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).dataobj, np.float32) / 255
    aff = img.affine
    icv = ndimage.binary_fill_holes(ndimage.binary_closing((gm + wm) > 0.3, iterations=3))
    icv = ndimage.binary_dilation(icv, iterations=1) & (t1 > 0.02)
    csf = np.clip(1.0 - gm - wm, 0, 1) * icv
    ijk = np.indices(t1.shape, dtype=np.float32)
    xyz = np.einsum("ij,jklm->iklm", aff[:3, :3].astype(np.float32), ijk) + aff[:3, 3, None, None, None].astype(np.float32)
    r = ((xyz[0] - 2) / 9.0) ** 2 + ((xyz[1] - 2) / 8.0) ** 2 + ((xyz[2] + 18) / 8.0) ** 2
    lesion = (r < 1.0).astype(np.float32)
    ventricles = (csf > 0.5) & (np.abs(xyz[0]) < 25) & (xyz[1] > -45) & (xyz[1] < 30) & (xyz[2] > -5) & (xyz[2] < 35)
    labels = np.zeros(t1.shape, np.int32)
    labels[ventricles] = 2
    labels[lesion > 0] = 1
    frac = {"wm": wm * (1 - lesion), "gm": gm * (1 - lesion), "csf": csf * (1 - lesion), "enhancing": lesion}

    def render(tr, te, gd: bool):
        s = np.zeros(t1.shape, np.float32)
        for name, f in frac.items():
            T1, T2, PD, gd_range = TISSUES[name]
            if gd:
                T1 = 1.0 / (1.0 / T1 + R1_GD * float(np.mean(gd_range)) / 1000.0)
            s += f * PD * (1 - np.exp(-tr / T1)) * np.exp(-te / T2)
        s = ndimage.gaussian_filter(s, 0.5)
        return (1000.0 * s / np.percentile(s[icv], 99)).astype(np.float32)

    cet1 = render(550.0, 14.0, gd=True)
    t2 = render(4000.0, 100.0, gd=False)
    return simulate.SourceCase("MNI152-2009a", Volume(cet1, aff), Volume(t2, aff), Volume(labels, aff))


def make_sample_case(folder: Path | None = None) -> dict[str, Path]:
    """Writes the sample case (four NIfTI files and the ground truth JSON)."""
    from MultimodalRegistrationLib.volume import atomic_write, save_volume

    paths = sample_paths(folder)
    case = simulate.simulate_case(mni_source(), seed=SAMPLE_SEED, params=SAMPLE_PARAMS)
    save_volume(case.coronal_cet1.with_array(np.round(case.coronal_cet1.array)), paths["coronal"], dtype=np.int16)
    save_volume(case.axial_t2.with_array(np.round(case.axial_t2.array)), paths["axial"], dtype=np.int16)
    save_volume(case.coronal_labels, paths["coronal_labels"], dtype=np.uint8)
    save_volume(case.axial_labels, paths["axial_labels"], dtype=np.uint8)
    gt = {"moving_to_fixed_ras": case.moving_to_fixed.tolist(),
          "description": "coronal header world -> axial world (RAS); made by MultimodalRegistrationLab.sample_case",
          "meta": case.meta}
    atomic_write(paths["truth"], lambda tmp: Path(tmp).write_text(json.dumps(gt, indent=2)), suffix=".json")
    return paths


if __name__ == "__main__":
    if "--make" in sys.argv:
        for k, v in make_sample_case().items():
            print(k, v, f"{os.path.getsize(v) / 1e6:.2f} MB")

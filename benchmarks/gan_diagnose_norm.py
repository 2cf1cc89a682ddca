"""Issue 12 diagnosis (a): does the input normalisation depend on what surrounds the brain?

Normalises the with-skull and the skull-stripped (HD-BET) ceT1 and T2 of TCGA-FG-6692 (native axial
5.5 mm, same session, same grid per contrast) with the old ``percentile`` and the new ``tissue-peak``
normalisation, and compares the normalised intensities *inside the brain* (HD-BET mask) between the
two versions: median ratio with-skull / stripped, and the mean absolute difference of the normalised
brain voxels. Identical normalisation would give ratio 1.000 and difference 0.

    OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 benchmarks/gan_diagnose_norm.py \
        --out benchmarks/results/gan_normalisation
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from MultimodalRegistrationLib import translate as T
from MultimodalRegistrationLab.simulate import default_data_root


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    a = p.parse_args()
    root = default_data_root() / "brats" / "TCGA-FG-6692_native"
    res = {"command": "OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 " + " ".join(sys.argv),
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine(),
           "data": str(root), "cases": {}}
    t0 = time.time()
    for con, dom in (("t1c", "A"), ("t2", "B")):
        ws = nib.load(str(root / f"{con}_ax5.5mm_withskull.nii.gz"))
        hb = nib.load(str(root / f"{con}_ax5.5mm_hdbet.nii.gz"))
        x_ws = np.asarray(ws.dataobj, np.float32)
        x_hb = np.asarray(hb.dataobj, np.float32)
        sp = np.asarray(ws.header.get_zooms()[:3], float)
        brain = x_hb > 0
        row = {"brain_voxels": int(brain.sum())}
        for name, norm in (("percentile", T.NORMALISATION), ("tissue-peak", T.tissue_peak_normalisation())):
            lo_w, hi_w = T.volume_scale(x_ws, sp, norm, dom)
            lo_h, hi_h = T.volume_scale(x_hb, sp, norm, dom)
            n_w = T.normalise01(x_ws, lo_w, hi_w)[brain]
            n_h = T.normalise01(x_hb, lo_h, hi_h)[brain]
            row[name] = {"scale_withskull": [lo_w, hi_w], "scale_stripped": [lo_h, hi_h],
                         "brain_median_withskull": float(np.median(n_w)),
                         "brain_median_stripped": float(np.median(n_h)),
                         "median_ratio_withskull_over_stripped": float(np.median(n_w) / np.median(n_h)),
                         "mean_abs_diff_brain": float(np.mean(np.abs(n_w - n_h)))}
        res["cases"][con] = row
        print(con, json.dumps(row, indent=1))
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "normalisation_withskull_vs_stripped.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

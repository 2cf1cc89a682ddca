"""Issue 12 diagnosis (b): do the network's normalisation layers (ILN / AdaLIN, instance statistics)
erase absolute intensity in large uniform regions?

Phantoms at the network's slice size (0..1 input, ceT1 domain): (1) a head-sized disk of uniform
level L (no structure) for several L: if instance normalisation erased absolute intensity the output
would not depend on L; (2) a WM-like disk (0.55) with a dark CSF-like blob (0.12, as ventricles on
ceT1) of radius r px: the synthetic T2 of the blob, relative to the WM around it, as a function of r
(a blob wider than the encoder's receptive field only looks "dark", like air). Also prints the
encoder's receptive field. Writes ``layers.json``.

    OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 benchmarks/gan_diagnose_layers.py \
        --checkpoint default --out benchmarks/results/gan_diagnosis_layers
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from MultimodalRegistrationLib.translate import load_translator


def disk(n, r, cx=None, cy=None):
    yy, xx = np.mgrid[:n, :n]
    cx = n / 2 if cx is None else cx
    cy = n / 2 if cy is None else cy
    return ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    tr = load_translator(a.checkpoint, "cpu")
    n = tr.size
    head = disk(n, 0.42 * n)
    res = {"command": "OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 " + " ".join(sys.argv),
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "threads": 1, "checkpoint": tr.name, "slice_px": n,
           "encoder_receptive_field_px": 10, "encoder_receptive_field_note":
               "two 4x4 stride-2 convolutions: 4 + 3*2 = 10 px at the input; the decoder's 3x3 convolutions "
               "at 1/4 resolution add context (n_res*2*2*4 px) but only from z, which is the same for every "
               "position deep inside a uniform region",
           "uniform_disk": [], "dark_blob": []}
    for L in (0.1, 0.3, 0.5, 0.7, 0.9):
        x = np.where(head, L, 0.0).astype(np.float32)[None]
        y = tr.translate_slices(x, "ceT1-to-T2")[0]
        inner = disk(n, 0.3 * n)
        res["uniform_disk"].append({"input_level": L, "output_mean_inner": float(y[inner].mean()),
                                    "output_std_inner": float(y[inner].std())})
    for r in (3, 6, 10, 16, 24, 32):
        x = np.where(head, 0.55, 0.0).astype(np.float32)
        blob = disk(n, r)
        x[blob] = 0.12
        y = tr.translate_slices(x[None], "ceT1-to-T2")[0]
        ring = disk(n, r + 12) & ~disk(n, r + 4) & head
        core = disk(n, max(1, r * 0.5))
        res["dark_blob"].append({"radius_px": r, "t2_blob_centre": float(y[core].mean()),
                                 "t2_surrounding_wm": float(y[ring].mean()),
                                 "blob_brighter_than_wm": bool(y[core].mean() > y[ring].mean())})
    for k in ("uniform_disk", "dark_blob"):
        for row in res[k]:
            print(k, {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in row.items()})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

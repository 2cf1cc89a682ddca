"""Cost of the output stages changed in issue 11: label transfer (box-restricted against the whole-grid
computation it replaced) and gzip of a .nii.gz (ISA-L against zlib level 1), on one simulated real-size case.

    python benchmarks/bench_outputs.py     # prints seconds and whether the results are identical
"""
from __future__ import annotations

import time
import zlib
from dataclasses import replace

import numpy as np

from MultimodalRegistrationLab import simulate
from MultimodalRegistrationLib import geometry, labels
from MultimodalRegistrationLib.volume import Volume


def whole_grid(lab: Volume, shape, affine, target_to_source):
    best = geometry.resample(Volume((lab.array == 0).astype(np.float32), lab.affine), shape, affine,
                             target_to_source, order=1, cval=1.0)
    out = np.zeros(shape, dtype=np.int32)
    for v in [int(x) for x in np.unique(lab.array) if x != 0]:
        w = geometry.resample(Volume((lab.array == v).astype(np.float32), lab.affine), shape, affine,
                              target_to_source, order=1)
        out[w > best] = v
        best = np.maximum(best, w)
    return out


def main() -> None:
    p = replace(simulate.PRESETS["bench"], header_rot_deg=8.0, header_shift_mm=15.0)
    case = simulate.simulate_case(simulate.load_brats_source("TCGA-FG-6692"), seed=30100, params=p)
    cl, ax, M = case.coronal_labels, case.axial_t2, case.moving_to_fixed
    t = time.perf_counter()
    old = whole_grid(cl, ax.shape, ax.affine, np.linalg.inv(M))
    t_old = time.perf_counter() - t
    t = time.perf_counter()
    new = labels.moving_labels_onto_fixed(cl, ax, M).array
    t_new = time.perf_counter() - t
    print(f"label transfer onto the {ax.shape} axial grid: whole grid {t_old:.3f} s, box {t_new:.3f} s, "
          f"identical: {np.array_equal(old, new)}")
    raw = np.stack([ax.array] * 3, axis=-1).astype(np.float32).tobytes()
    t = time.perf_counter()
    z = zlib.compress(raw, 1)
    t_z = time.perf_counter() - t
    from isal import isal_zlib
    t = time.perf_counter()
    i = isal_zlib.compress(raw, 1)
    t_i = time.perf_counter() - t
    print(f"gzip of a 3-channel float32 volume ({len(raw) / 1e6:.1f} MB): zlib level 1 {t_z:.3f} s "
          f"({len(z) / 1e6:.1f} MB), ISA-L level 1 {t_i:.3f} s ({len(i) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

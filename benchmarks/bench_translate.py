"""Conversion speed of the GAN translator: seconds per slice and per volume on N CPU threads.

    PYTHONPATH=MultimodalRegistration python benchmarks/bench_translate.py [--checkpoint default]
        [--threads 2] [--slices 20] [--inplane 384] [--batch-sizes 1 8] [--device cpu]

The test volume is a coronal-like stack (``--slices`` slices of ``--inplane``^2 px, 0.5 mm in-plane,
4 mm slices, like the paper's coronal ceT1) made from the nilearn ICBM152 template so the benchmark
runs without ../shared/data. Times include normalisation, resizing to the network's size and back.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def coronal_stack(n_slices: int, inplane: int):
    import nibabel as nib
    from scipy import ndimage as ndi

    from MultimodalRegistrationLab.synth import nilearn_data_dir
    from MultimodalRegistrationLib.volume import Volume

    img = nib.load(str(nilearn_data_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    js = np.linspace(60, 170, n_slices).astype(int)           # coronal planes (axis 1 = A)
    sl = t1[:, js, :]                                          # (R, n, S)
    sl = ndi.zoom(sl, (inplane / sl.shape[0], 1, inplane / sl.shape[2]), order=1)
    aff = np.diag([0.5, 4.0, 0.5, 1.0])
    return Volume(sl.astype(np.float32), aff)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--inplane", type=int, default=384)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)

    import torch

    from MultimodalRegistrationLib.translate import load_translator

    torch.set_num_threads(a.threads)
    tr = load_translator(a.checkpoint, a.device)
    vol = coronal_stack(a.slices, a.inplane)
    print(f"translator {tr.name}, device {a.device}, {torch.get_num_threads()} threads, "
          f"volume {vol.shape} (slice axis 1), network {tr.size}px")
    tr.convert(vol, "ceT1-to-T2", batch_size=4)  # warm-up
    for bs in a.batch_sizes:
        for direction in ("ceT1-to-T2", "T2-to-ceT1"):
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                tr.convert(vol, direction, batch_size=bs)
                times.append(time.perf_counter() - t0)
            t = min(times)
            print(f"batch {bs:2d} {direction:11s}: {t:6.2f} s/volume ({a.slices} slices), "
                  f"{1000 * t / a.slices:7.1f} ms/slice")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

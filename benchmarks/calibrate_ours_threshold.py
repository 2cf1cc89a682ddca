"""Calibrates the success threshold of ``method="ours"`` (final NCC) on simulated cases.

Calibration sources: BraTSorch-case and BraTS-MET-00110 only (the TCGA cases are held out and only
used in the benchmark). For each case: run ours, record its final NCC; then evaluate the same NCC
(finest level, same points) at the ground truth perturbed by known rigid errors (2, 5, 10, 20 mm mean
TRE-scale offsets with a few degrees), i.e. what a misregistration of that size would score.

    PYTHONPATH=MultimodalRegistration python benchmarks/calibrate_ours_threshold.py --cases 6 --out /work/bench_runs/calib
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from MultimodalRegistrationLib import geometry, metrics
    from MultimodalRegistrationLab import simulate
    from MultimodalRegistrationLib.registration import SearchNccParams, register
    from MultimodalRegistrationLib.registration.images import robust_scale, signal_mask
    from MultimodalRegistrationLib.registration.refine import Level, level_ncc
    defaults = SearchNccParams()

    rng = np.random.default_rng(0)
    rows = []
    srcs = {n: simulate.load_brats_source(n) for n in ("BraTSorch-case", "BraTS-MET-00110")}
    for i in range(a.cases):
        name = list(srcs)[i % 2]
        p = replace(simulate.PRESETS["bench"], header_rot_deg=15.0 if i % 2 else 5.0,
                    header_shift_mm=30.0 if i % 2 else 10.0)
        case = simulate.simulate_case(srcs[name], seed=5000 + i, params=p)
        pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
        res = register(case.coronal_t2, case.axial_t2, "ours", seed=i)
        tre = metrics.tre(res.moving_to_fixed, case.moving_to_fixed, pts)["mean"]
        rows.append({"case": i, "source": name, "kind": "ours", "tre": tre, "ncc": res.metric})
        # NCC of perturbed truths, on the same finest level as the method's final metric
        mov = np.asarray(case.coronal_t2.array, np.float32)
        fix = np.asarray(case.axial_t2.array, np.float32)
        mov, fix = mov / robust_scale(mov), fix / robust_scale(fix)
        lv = defaults.levels_mm[-1]
        lvl = Level(case.coronal_t2, mov, case.axial_t2, fix, signal_mask(fix, 0.08, 3), lv,
                    defaults.profile_samples, defaults.max_points[-1], i, torch.device("cpu"))
        rows.append({"case": i, "source": name, "kind": "truth", "tre": 0.0,
                     "ncc": level_ncc(case.moving_to_fixed, lvl)})
        c = geometry.apply(case.moving_to_fixed, pts.mean(0)[None])[0]
        for mm in (2.0, 3.0, 5.0, 10.0, 20.0):
            for _ in range(3):
                d = rng.normal(size=3)
                ax = rng.normal(size=3)
                E = geometry.about(geometry.rotvec_matrix(np.radians(mm / 2.0) * ax / np.linalg.norm(ax)), c,
                            d / np.linalg.norm(d) * mm)
                M = E @ case.moving_to_fixed
                t = metrics.tre(M, case.moving_to_fixed, pts)["mean"]
                rows.append({"case": i, "source": name, "kind": f"perturbed_{mm:g}mm", "tre": t,
                             "ncc": level_ncc(M, lvl)})
        print(json.dumps(rows[-17]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(rows, indent=1))
    for kind in sorted({r["kind"] for r in rows}):
        v = np.array([r["ncc"] for r in rows if r["kind"] == kind])
        t = np.array([r["tre"] for r in rows if r["kind"] == kind])
        print(f"{kind:18s} n={len(v):3d} TRE mean {t.mean():6.2f} mm  NCC min {v.min():.3f} median {np.median(v):.3f} max {v.max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""dev (issue 11): search-cr on thin coronal slabs (12 slices of 2.0-2.5 mm: 24-30 mm) of the tuning
patients. python thindev.py OUT.jsonl seed0 params-json regime per [sources]"""
import sys, time, json
import numpy as np
import torch, SimpleITK as sitk
torch.set_num_threads(2); sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
from MultimodalRegistrationLib import metrics
from MultimodalRegistrationLab import simulate
from MultimodalRegistrationLib.registration import register
from thincase import thin_params

out, seed0, params, regime, per = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
sources = sys.argv[6].split(",") if len(sys.argv) > 6 else ["BraTSorch-case", "TCGA-FG-6692", "stroke"]
sp = thin_params(regime)
with open(out, "w") as fh:
    for si, name in enumerate(sources):
        src = simulate.load_brats_source(name)
        for j in range(per):
            seed = seed0 + 1000 * si + j
            case = simulate.simulate_case(src, seed=seed, params=sp)
            pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
            tre = lambda M: metrics.tre(np.asarray(M), case.moving_to_fixed, pts)["mean"]
            t = time.perf_counter()
            r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=dict(params), seed=0)
            secs = time.perf_counter() - t
            c = r.details["consistency"]
            row = dict(source=name, seed=seed, tre=tre(r.moving_to_fixed), flag=r.success, secs=secs, cons=c["mm"],
                       fwd=tre(c["forward_moving_to_fixed_ras"]), bwd=tre(np.linalg.inv(c["backward_fixed_to_moving_ras"])),
                       hdr=tre(np.eye(4)), thick=float(case.coronal_cet1.spacing[2] * case.coronal_cet1.shape[2]))
            fh.write(json.dumps(row, default=float) + "\n"); fh.flush()
            print(name, seed, f"hdr {row['hdr']:.1f} TRE {row['tre']:.2f} flag {r.success} cons {row['cons']:.2f} fwd {row['fwd']:.1f} bwd {row['bwd']:.1f} {secs:.1f}s", flush=True)

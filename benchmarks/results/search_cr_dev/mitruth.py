import sys, glob, numpy as np, time
import SimpleITK as sitk; sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
from MultimodalRegistrationLib import metrics
from cases import load_case
from MultimodalRegistrationLib.polish import mi_polish
out=[]; ts=[]
for c in sorted(glob.glob(sys.argv[1] + "/*/")):
    case = load_case(c)
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    t0=time.perf_counter()
    r = mi_polish(case.coronal_cet1, case.axial_t2, {"t": case.moving_to_fixed})
    ts.append(time.perf_counter()-t0)
    out.append(metrics.tre(r["moving_to_fixed"], case.moving_to_fixed, pts)["mean"])
print(" ".join(f"{x:.2f}" for x in out), " median", np.median(out), "time", np.median(ts))

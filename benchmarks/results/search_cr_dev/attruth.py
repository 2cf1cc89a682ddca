import sys, json, glob, numpy as np, torch; torch.set_num_threads(1)
from MultimodalRegistrationLib import metrics
from cases import load_case
from MultimodalRegistrationLib.register import register
params = json.loads(sys.argv[2]); out=[]
for c in sorted(glob.glob(sys.argv[1] + "/*/")):
    case = load_case(c)
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    r = register(case.coronal_cet1, case.axial_t2, "ours", params=dict(params, init="header", initial_transform=case.moving_to_fixed))
    out.append(metrics.tre(r.moving_to_fixed, case.moving_to_fixed, pts)["mean"])
print(" ".join(f"{x:.2f}" for x in out), " median", np.median(out))

import sys, json, time, glob, numpy as np
import torch; torch.set_num_threads(1)
from MultimodalRegistrationLib import metrics
from cases import load_case
from MultimodalRegistrationLib.register import register
cases = sorted(glob.glob(sys.argv[1] + "/*/"))
moving_kind = sys.argv[2]; params = json.loads(sys.argv[3]); method = sys.argv[4] if len(sys.argv) > 4 else "ours"
tres = []; times = []
for c in cases:
    case = load_case(c)
    mov = case.coronal_cet1 if moving_kind == "ce" else case.coronal_t2
    t0 = time.perf_counter()
    r = register(mov, case.axial_t2, method, params=dict(params))
    dt = time.perf_counter() - t0
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    t = metrics.tre(r.moving_to_fixed, case.moving_to_fixed, pts)["mean"]
    h = metrics.tre(np.eye(4), case.moving_to_fixed, pts)["mean"]
    tres.append(t); times.append(dt)
    print(f"{c.split('/')[-2]:22s} hdr {h:6.2f}  TRE {t:7.2f}  metric {r.metric:.3f} search {r.details.get('search_best_ncc', float('nan')):.3f}  {dt:5.2f}s", flush=True)
tres = np.array(tres)
print(f"success {np.mean(tres<2):.2f}  median {np.median(tres):.2f}  p95 {np.percentile(tres,95):.2f}  time {np.median(times):.2f}")

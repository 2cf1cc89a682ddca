"""Residual of search-cr's estimates against the truth on tuning-patient dev cases: is the error a
systematic offset (a convention) or scatter? Prints per case the residual displacement (fixed world, mm,
at the overlap centroid) and rotation (deg) of the forward, backward and final estimates."""
import sys, json
sys.path.insert(0, "../search_cr_lattice_dev")
from case import *
from MultimodalRegistrationLib import geometry
out = open(sys.argv[1], "a")
seed0 = int(sys.argv[2]); sources = sys.argv[3].split(","); regimes = sys.argv[4].split(","); per = int(sys.argv[5])
params = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
def resid(M, case, pts):
    c = pts.mean(0)
    d = geometry.apply(np.asarray(M), c[None])[0] - geometry.apply(case.moving_to_fixed, c[None])[0]
    R = np.asarray(M)[:3, :3] @ case.moving_to_fixed[:3, :3].T
    ang = np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))
    return [round(float(x), 3) for x in d], round(float(ang), 3)
for src, reg, seed, case, pts in dev_cases(seed0, sources, regimes, per):
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=params, seed=0)
    c = r.details["consistency"]
    fwd = np.asarray(c["forward_moving_to_fixed_ras"]); bwd = np.linalg.inv(np.asarray(c["backward_fixed_to_moving_ras"]))
    row = {"source": src, "regime": reg, "seed": seed, "success": r.success,
           "tre": round(tre(r.moving_to_fixed, case, pts), 3), "tre_fwd": round(tre(fwd, case, pts), 3),
           "tre_bwd": round(tre(bwd, case, pts), 3),
           "res": resid(r.moving_to_fixed, case, pts), "res_fwd": resid(fwd, case, pts), "res_bwd": resid(bwd, case, pts),
           "fixed_dir": np.round(case.axial_t2.direction, 3).tolist(), "moving_dir": np.round(case.coronal_cet1.direction, 3).tolist(),
           "fixed_spacing": np.round(case.axial_t2.spacing, 3).tolist(), "moving_spacing": np.round(case.coronal_cet1.spacing, 3).tolist()}
    print(json.dumps(row), file=out, flush=True); print(row["source"], row["seed"], row["tre"], row["tre_fwd"], row["tre_bwd"], row["res_fwd"], row["res_bwd"], flush=True)

import sys, json
from dataclasses import replace
import numpy as np, torch
torch.set_num_threads(2)
from MultimodalRegistrationLib import metrics, geometry
from MultimodalRegistrationLab import evaluate_real, simulate
from MultimodalRegistrationLib.registration import register
from MultimodalRegistrationLib.registration.vote import NmiScore
from MultimodalRegistrationLib.registration.nmi_polish import NmiPolisher
from scipy.spatial.transform import Rotation as R
def thin_params(regime="large"):
    """evaluate-real's "bench" generator with ``regime``'s header offsets and a thin coronal stack (12 slices
    of 2.0-2.5 mm: 24-30 mm), as thindev.py uses it."""
    rot, shift = evaluate_real.REGIMES[regime]
    return replace(simulate.PRESETS["bench"], header_rot_deg=rot, header_shift_mm=shift, cor_slices=(12, 12),
                   cor_slice_mm=(2.0, 2.5))
def make_thin(name, seed):
    case = simulate.simulate_case(simulate.load_brats_source(name), seed=seed, params=thin_params())
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    return case, pts
if __name__ == "__main__":
    name, seed = sys.argv[1], int(sys.argv[2])
    params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    case, pts = make_thin(name, seed)
    tre = lambda M: metrics.tre(np.asarray(M), case.moving_to_fixed, pts)["mean"]
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=params, seed=0)
    c = r.details["consistency"]
    E = np.asarray(r.moving_to_fixed) @ np.linalg.inv(case.moving_to_fixed)
    print("TRE %.2f flag %s cons %.2f resid angle %.1f" % (tre(r.moving_to_fixed), r.success, c["mm"], np.degrees(R.from_matrix(E[:3,:3]).magnitude())), [(round(h["mm"],2), h["restarted_from_the_other"]) for h in c["passes"]])
    sc = NmiScore(case.coronal_cet1, case.axial_t2); pol = NmiPolisher(case.coronal_cet1, case.axial_t2)
    for nm, M in [("result", r.moving_to_fixed), ("truth", case.moving_to_fixed)]:
        P, info = pol.polish(M, 8)
        print(nm, "nmi2mm %.4f polish1mm %.4f -> %.4f (TRE %.2f)" % (sc(M), info["nmi_before"], info["nmi_after"], tre(P)))

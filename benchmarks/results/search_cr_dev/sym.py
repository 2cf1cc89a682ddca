import sys, glob, numpy as np, torch; torch.set_num_threads(1)
from MultimodalRegistrationLib import metrics, geometry
from cases import load_case
from MultimodalRegistrationLib.register import register
def kabsch(P, Q):
    pc, qc = P.mean(0), Q.mean(0)
    H = (P - pc).T @ (Q - qc)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1, 1, d]) @ U.T
    M = np.eye(4); M[:3, :3] = R; M[:3, 3] = qc - R @ pc
    return M
for c in sorted(glob.glob(sys.argv[1] + "/*/")):
    case = load_case(c)
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    r = register(case.coronal_cet1, case.axial_t2, "search-cr")
    F = r.moving_to_fixed; B = np.asarray(r.details["consistency"]["backward_fixed_to_moving_ras"])
    P = metrics.overlap_points(case.coronal_cet1, case.axial_t2, F, max_points=4000)
    Q = 0.5 * (geometry.apply(F, P) + geometry.apply(np.linalg.inv(B), P))
    S = kabsch(P, Q)
    t = lambda M: metrics.tre(M, case.moving_to_fixed, pts)["mean"]
    print(f"{c.split('/')[-2]:22s} fwd {t(F):6.2f} bwd {t(np.linalg.inv(B)):6.2f} sym {t(S):6.2f} cons {r.details['consistency']['mm']:.2f}", flush=True)

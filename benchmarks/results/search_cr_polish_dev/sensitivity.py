"""Dev: how far the NMI polish output moves (mm, mean over the overlap) when its start moves by 1e-7, 1e-5 and
1e-3 mm (translation): the size of cross-machine differences that tools/golden.py must allow for."""
import sys
sys.path.insert(0, "../search_cr_lattice_dev")
from case import *
from MultimodalRegistrationLib.registration.nmi_polish import polish_nmi
from MultimodalRegistrationLib.registration.search_cr import pose_distance_mm
for src, reg, seed in [("stroke","paper",61001),("TCGA-FG-6692","large",61002),("BraTSorch-case","paper",40001),("TCGA-FG-6692","paper",42001)]:
    case, pts = make(src, reg, seed)
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params={"nmi_polish": False}, seed=0)
    P0, _ = polish_nmi(case.coronal_cet1, case.axial_t2, r.moving_to_fixed)
    d = []
    for eps in (1e-7, 1e-5, 1e-3):
        M = r.moving_to_fixed.copy(); M[:3, 3] += eps
        P, _ = polish_nmi(case.coronal_cet1, case.axial_t2, M)
        d.append(pose_distance_mm(pts, P0, P))
    print(src, seed, ["%.2e" % x for x in d])

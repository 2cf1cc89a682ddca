"""Dev: search-cr, then registration.nmi_polish.polish_nmi from its result with the given keyword
arguments (JSON); TRE before and after, and the polish's time."""
import sys, json, time
sys.path.insert(0, "../search_cr_lattice_dev")
from case import *
from MultimodalRegistrationLib.registration.nmi_polish import polish_nmi
out = open(sys.argv[1], "a")
seed0 = int(sys.argv[2]); sources = sys.argv[3].split(","); regimes = sys.argv[4].split(","); per = int(sys.argv[5])
kw = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
for src, reg, seed, case, pts in dev_cases(seed0, sources, regimes, per):
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params={}, seed=0)
    t0 = time.perf_counter()
    P, d = polish_nmi(case.coronal_cet1, case.axial_t2, r.moving_to_fixed, **kw)
    row = {"source": src, "regime": reg, "seed": seed, "success": r.success, "tre": round(tre(r.moving_to_fixed, case, pts), 3),
           "tre_polished": round(tre(P, case, pts), 3), "polish": d, "s": round(time.perf_counter() - t0, 3),
           "s_search_cr": r.details["seconds"]["total"]}
    print(json.dumps(row), file=out, flush=True)
    print(src, seed, row["tre"], row["tre_polished"], round(d["nmi_before"], 5), round(d["nmi_after"], 5), d["applied"], row["s"], flush=True)

from case import *
from MultimodalRegistrationLib.registration.vote import NmiScore
src, reg, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
case, pts = make(src, reg, seed)
r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=params, seed=0)
c = r.details["consistency"]; sc = NmiScore(case.coronal_cet1, case.axial_t2)
cands = {"result": r.moving_to_fixed, "truth": case.moving_to_fixed}
for p in c["passes"]:
    cands[f"p{p['pass']}f"] = p["searched_forward_ras"]; cands[f"p{p['pass']}b"] = p["searched_backward_inverse_ras"]
print(src, reg, seed, r.success, {k: (round(tre(v, case, pts), 2), round(sc(v), 4)) for k, v in cands.items()}, [(round(p["mm"],2), p["restarted_from_the_other"], p.get("kept_the_earlier_result")) for p in c["passes"]], r.details.get("vote"))

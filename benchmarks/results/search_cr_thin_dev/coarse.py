import sys
from thincase import *
from MultimodalRegistrationLib.registration import search as S
name, seed = sys.argv[1], int(sys.argv[2])
case, pts = make_thin(name, seed)
tre = lambda M: metrics.tre(np.asarray(M), case.moving_to_fixed, pts)["mean"]
orig = S.fft_search
logs = []
def wrapped(*a, **k):
    # capture per-rotation results of the coarse stage by calling run with keep=all
    out = orig(*a, **k)
    logs.append(out)
    return out
S.fft_search = wrapped
import MultimodalRegistrationLib.registration.search_ncc as SN
SN.fft_search = wrapped
r = register(case.coronal_cet1, case.axial_t2, "search-cr", params={"concurrent": False, "search_keep": 200}, seed=0)
sc = NmiScore(case.coronal_cet1, case.axial_t2)
print("final TRE %.2f" % tre(r.moving_to_fixed))
for i, out in enumerate(logs[:4]):
    fwd = i < 2
    rows = []
    for rank, (s, M) in enumerate(out):
        Mf = M if fwd else np.linalg.inv(M)
        rows.append((rank, s, tre(Mf), sc(Mf)))
    best_tre = min(rows, key=lambda x: x[2])
    best_nmi = max(rows, key=lambda x: x[3])
    print("search", i, "fwd" if fwd else "bwd", "n", len(rows), "top:", [("%.3f" % x[1], round(x[2],1), "%.4f" % x[3]) for x in rows[:3]], "closest:", best_tre[0], round(best_tre[2],1), "%.4f" % best_tre[3], "| best nmi rank", best_nmi[0], round(best_nmi[2],1), "%.4f" % best_nmi[3])

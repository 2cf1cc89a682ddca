import sys, time
from thincase import *
from MultimodalRegistrationLib.geometry import about, rotvec_matrix
name, seed = sys.argv[1], int(sys.argv[2]); deg = float(sys.argv[3]) if len(sys.argv) > 3 else 12.0
case, pts = make_thin(name, seed)
tre = lambda M: metrics.tre(np.asarray(M), case.moving_to_fixed, pts)["mean"]
r = register(case.coronal_cet1, case.axial_t2, "search-cr", params={}, seed=0)
pol = NmiPolisher(case.coronal_cet1, case.axial_t2)
res = np.asarray(r.moving_to_fixed)
c = geometry.apply(res, case.coronal_cet1.center_world()[None])[0]
P0, i0 = pol.polish(res, 8)
print("result TRE %.2f flag %s nmi %.4f" % (tre(res), r.success, i0["nmi_after"]))
t = time.perf_counter()
for ax in range(3):
    for sgn in (-1, 1):
        v = np.zeros(3); v[ax] = np.radians(sgn * deg)
        start = about(rotvec_matrix(v), c) @ res
        P, info = pol.polish(start, 20)
        print(" axis %d %+d: start TRE %.1f -> %.2f nmi %.4f" % (ax, sgn, tre(start), tre(P), info["nmi_after"]))
print("secs %.2f" % (time.perf_counter() - t))

"""Prototype (dev only): polish search-cr's result by maximising a soft-binned (linear splat) NMI with
scipy's Powell, and report the TRE before and after; is the NMI optimum closer to the truth than the
correlation ratio's?"""
import sys, json, time
sys.path.insert(0, "../search_cr_lattice_dev")
from case import *
from scipy import ndimage, optimize
from MultimodalRegistrationLib import geometry
from MultimodalRegistrationLib.geometry import about, rotvec_matrix
from MultimodalRegistrationLib.volume import Volume
from MultimodalRegistrationLib.registration.pyramid import shrink_inplane, smooth_for
from MultimodalRegistrationLib.registration.images import robust_scale

class SoftNmi:
    def __init__(self, moving, fixed, level_mm=1.0, bins=32, npts=200000, seed=0):
        f = shrink_inplane(fixed, level_mm); fa = np.asarray(f.array, np.float32)
        ijk = np.argwhere(fa > -1)
        rng = np.random.default_rng(seed)
        if len(ijk) > npts: ijk = ijk[np.sort(rng.choice(len(ijk), npts, replace=False))]
        self.world = f.voxel_to_world(ijk.astype(np.float64))
        self.c = self.world.mean(0)
        self.bins = bins
        fv = fa[tuple(ijk.T)]
        self.fb = np.clip((fv / robust_scale(fa) * (bins - 1)).astype(np.int64), 0, bins - 1)
        m = shrink_inplane(moving, level_mm / 2)
        self.mov = Volume(smooth_for(m, level_mm), m.affine)
        self.mscale = robust_scale(self.mov.array)
    def nmi(self, M):
        vox = self.mov.world_to_voxel(geometry.apply(np.linalg.inv(M), self.world))
        inside = np.all((vox > -0.5) & (vox < np.asarray(self.mov.shape) - 0.5), axis=1)
        v = ndimage.map_coordinates(self.mov.array, vox.T, order=1, mode="nearest")
        t = np.clip(v / self.mscale * (self.bins - 1), 0, self.bins - 1 - 1e-6)
        lo = t.astype(np.int64); fr = t - lo
        fb = self.fb[inside]; lo = lo[inside]; fr = fr[inside]
        j = np.bincount(fb * self.bins + lo, weights=1 - fr, minlength=self.bins ** 2) + \
            np.bincount(fb * self.bins + lo + 1, weights=fr, minlength=self.bins ** 2)
        p = j / j.sum(); pa = p.reshape(self.bins, self.bins).sum(1); pb = p.reshape(self.bins, self.bins).sum(0)
        H = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()
        return (H(pa) + H(pb)) / H(p)
    def polish(self, M0):
        f = lambda x: -self.nmi(about(rotvec_matrix(np.radians(x[:3])), self.c, x[3:]) @ M0)
        r = optimize.minimize(f, np.zeros(6), method="Powell", options={"xtol": 1e-3, "ftol": 1e-7, "maxfev": 600})
        x = r.x
        return about(rotvec_matrix(np.radians(x[:3])), self.c, x[3:]) @ M0, r.nfev

out = open(sys.argv[1], "a")
seed0 = int(sys.argv[2]); sources = sys.argv[3].split(","); regimes = sys.argv[4].split(","); per = int(sys.argv[5])
level = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
for src, reg, seed, case, pts in dev_cases(seed0, sources, regimes, per):
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params={}, seed=0)
    t0 = time.perf_counter()
    s = SoftNmi(case.coronal_cet1, case.axial_t2, level_mm=level)
    P, nfev = s.polish(r.moving_to_fixed)
    dt = time.perf_counter() - t0
    row = {"source": src, "seed": seed, "tre": round(tre(r.moving_to_fixed, case, pts), 3), "tre_polished": round(tre(P, case, pts), 3),
           "nmi_result": s.nmi(r.moving_to_fixed), "nmi_polished": s.nmi(P), "nmi_truth": s.nmi(case.moving_to_fixed), "nfev": nfev, "s": round(dt, 2)}
    print(json.dumps(row), file=out, flush=True); print(row, flush=True)

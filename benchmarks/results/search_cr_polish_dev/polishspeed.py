"""Dev: the NMI polish's cost and accuracy for a few settings (torch threads, points, level), each from
the same unpolished search-cr result (nmi_polish=False), on a quiet machine; medians over the cases."""
import sys, json, time
sys.path.insert(0, "../search_cr_lattice_dev")
from case import *
from MultimodalRegistrationLib.registration.nmi_polish import polish_nmi
variants = {"t1_60k": (1, {}), "t2_60k": (2, {}), "t1_30k": (1, {"max_points": 30000}), "t2_30k": (2, {"max_points": 30000}),
            "t2_100k": (2, {"max_points": 100000}), "t2_60k_it8": (2, {"iterations": 8})}
rows = []
for src, reg, seed, case, pts in dev_cases(int(sys.argv[2]), sys.argv[3].split(","), ["paper", "large"], int(sys.argv[4])):
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params={"nmi_polish": False}, seed=0)
    row = {"source": src, "seed": seed, "tre": tre(r.moving_to_fixed, case, pts)}
    for name, (th, kw) in variants.items():
        torch.set_num_threads(th)
        t0 = time.perf_counter(); P, d = polish_nmi(case.coronal_cet1, case.axial_t2, r.moving_to_fixed, profile=1, **kw)
        row[name] = (round(tre(P, case, pts), 3), round(time.perf_counter() - t0, 3), d["evaluations"])
        torch.set_num_threads(1)
    rows.append(row); print(json.dumps(row), flush=True)
with open(sys.argv[1], "w") as fh:
    for row in rows: fh.write(json.dumps(row) + "\n")
    for name in variants:
        fh.write(json.dumps({"variant": name, "median_tre": float(np.median([r[name][0] for r in rows])),
                             "median_s": float(np.median([r[name][1] for r in rows]))}) + "\n")
print(open(sys.argv[1]).read().splitlines()[-len(variants):])

"""Issue 12 lever ablation: how the no-jitter training set differs from run4's (train128_v4b).

Prints JSON: pair counts per source, whether the real BraTS slices are identical, whether the render
descriptions (anatomy/tumour/sequence draws) agree apart from the jitter fields, and the per-render mean
absolute difference of the ceT1 / T2 slices (where the same slice was picked).

usage: python3 benchmarks/gan_ablation_check_data.py JITTER.npz NOJITTER.npz
"""
import json
import sys
from collections import Counter

import numpy as np


def load(p):
    with np.load(p) as z:
        return z["A"].astype(np.float32), z["B"].astype(np.float32), [str(s) for s in z["source"]], json.loads(str(z["recipe"]))


def main(a_path, b_path):
    A1, B1, s1, r1 = load(a_path)
    A2, B2, s2, r2 = load(b_path)
    out = {"files": [a_path, b_path], "pairs": [len(A1), len(A2)],
           "sources": [dict(Counter(x.split(":")[0] for x in s)) for s in (s1, s2)],
           "contrast_jitter": [r1.get("contrast_jitter"), r2.get("contrast_jitter")],
           "dropped_empty_target_slices": [r1.get("filtered", {}).get("dropped_empty_target_slices"),
                                           r2.get("filtered", {}).get("dropped_empty_target_slices")]}
    real1 = [i for i, s in enumerate(s1) if s.startswith("brats:")]
    real2 = [i for i, s in enumerate(s2) if s.startswith("brats:")]
    out["real_slices_identical"] = bool(len(real1) == len(real2) and np.array_equal(A1[real1], A2[real2])
                                        and np.array_equal(B1[real1], B2[real2]))
    skip = {"contrast_jitter", "gamma_ceT1"}
    d1 = [{k: v for k, v in d.items() if k not in skip} for d in r1["renders"]]
    d2 = [{k: v for k, v in d.items() if k not in skip} for d in r2["renders"]]
    out["render_descriptions_equal_apart_from_jitter"] = d1 == d2
    out["gamma_ceT1_jitter_run"] = [round(d.get("gamma_ceT1", 1.0), 3) for d in r1["renders"]]
    per = []
    for i in range(len(r1["renders"])):
        k1 = [j for j, s in enumerate(s1) if s == f"mni152-render:{i}"]
        k2 = [j for j, s in enumerate(s2) if s == f"mni152-render:{i}"]
        n = min(len(k1), len(k2))
        per.append({"render": i, "slices": [len(k1), len(k2)],
                    "mean_abs_diff_ceT1": round(float(np.abs(A1[k1[:n]] - A2[k2[:n]]).mean()), 4),
                    "mean_abs_diff_T2": round(float(np.abs(B1[k1[:n]] - B2[k2[:n]]).mean()), 4)})
    out["renders"] = per
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])

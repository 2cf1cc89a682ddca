"""How well each method's own metric predicts success (mean TRE < 2 mm) on benchmark results.

    python benchmarks/flag_calibration.py RESULTS.csv[:methods] ...

For each method: AUC of the metric as a success score (sign chosen so that larger = better), and the
threshold with the best accuracy on these rows. Use rows from calibration sources only when the
threshold is to be reported on held-out ones (``--sources``).
"""
from __future__ import annotations

import argparse
import csv

import numpy as np

SIGN = {"ours": 1.0, "paper": -1.0, "mi": -1.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--sources", default="", help="comma-separated sources to keep (default all)")
    a = ap.parse_args()
    keep_src = set(filter(None, a.sources.split(",")))
    rows = []
    for spec in a.csv:
        path, _, only = spec.partition(":")
        ms = set(only.split(",")) if only else None
        rows += [r for r in csv.DictReader(open(path)) if (ms is None or r["method"] in ms)
                 and (not keep_src or r["source"] in keep_src)]
    for m, sgn in SIGN.items():
        r = [x for x in rows if x["method"] == m and np.isfinite(float(x["metric"]))]
        if not r:
            continue
        score = sgn * np.array([float(x["metric"]) for x in r])
        ok = np.array([float(x["tre_mean"]) < 2.0 for x in r])
        pos, neg = score[ok], score[~ok]
        auc = float("nan") if not len(pos) or not len(neg) else float(
            np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
        cands = np.unique(score)
        acc = [np.mean((score >= t) == ok) for t in cands]
        t = cands[int(np.argmax(acc))]
        print(f"{m:6s} n={len(r):3d} successes={ok.sum():3d} AUC={auc:.2f} best threshold "
              f"{'>=' if sgn > 0 else '<='} {sgn * t:.4g} (accuracy {max(acc):.2f}); metric range "
              f"ok [{sgn * pos.max() if len(pos) else float('nan'):.4g}, {sgn * pos.min() if len(pos) else float('nan'):.4g}]"
              f" failed [{sgn * neg.max() if len(neg) else float('nan'):.4g}, {sgn * neg.min() if len(neg) else float('nan'):.4g}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

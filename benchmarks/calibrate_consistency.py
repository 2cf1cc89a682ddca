"""Choose search-cr's consistency threshold on the tuning patients of an `mmreg evaluate-real` run and
report the flag agreement it gives, separately, on the held-out patient.

    python benchmarks/calibrate_consistency.py benchmarks/results/real_suite/results.csv

A result is "right" when its TRE is under 2 mm; the flag says "success" when the forward and backward
registrations agree to within the threshold. Prints, for each candidate threshold, the agreement
between flag and truth on the tuning patients and on the held-out one, and the threshold chosen (the
best agreement on the tuning patients; ties go to the smaller threshold, which flags more).
"""
from __future__ import annotations

import csv
import sys

import numpy as np


def main(argv=None) -> int:
    path = (argv or sys.argv[1:])[0]
    rows = [r for r in csv.DictReader(open(path)) if r["method"] == "search-cr" and r["consistency_mm"] != ""]
    tune = [r for r in rows if r["held_out"] != "True"]
    held = [r for r in rows if r["held_out"] == "True"]

    def agreement(rs, tau):
        if not rs:
            return float("nan")
        ok = np.array([float(r["tre_mean"]) < 2.0 for r in rs])
        flag = np.array([float(r["consistency_mm"]) <= tau for r in rs])
        return float((ok == flag).mean())

    taus = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0]
    print(f"{len(tune)} tuning cases, {len(held)} held-out cases")
    print("| threshold mm | agreement, tuning | agreement, held-out |\n|---|---|---|")
    for t in taus:
        print(f"| {t:g} | {agreement(tune, t):.0%} | {agreement(held, t):.0%} |")
    best = max(taus, key=lambda t: (agreement(tune, t), -t))
    print(f"chosen on the tuning cases: {best:g} mm (tuning {agreement(tune, best):.0%}, "
          f"held-out {agreement(held, best):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

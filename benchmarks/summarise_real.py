"""The README's combined table of an `mmreg evaluate-real` result folder: per method, over the
exact-truth cases (every source but BraTS-MET-00110, whose ceT1/T2 pair is ~1.4 degrees apart), and
separately for the held-out patient: success (TRE < 2 mm), median and 95th-percentile TRE (numpy's
linear percentile), flag agreement (flag true <=> TRE < 2 mm, over cases with a flag), results flagged
successful while 2 mm or more off, and the median per-case time ratio against search-cr.

    python benchmarks/summarise_real.py benchmarks/results/real_suite_v5
"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

UNCERTAIN = ("BraTS-MET-00110",)


def table(rows, title):
    by = defaultdict(list)
    for r in rows:
        by[r["method"]].append(r)
    ref = {r["case"]: float(r["seconds"]) for r in by.get("search-cr", [])}
    print(f"\n{title}\n| method | cases | success | median TRE | p95 TRE | flag agreement | flagged successful yet >= 2 mm off | time / search-cr (median per case) |")
    print("|---|---|---|---|---|---|---|---|")
    for m, rs in by.items():
        t = np.array([float(r["tre_mean"]) for r in rs])
        flagged = [r for r in rs if r["flag"] in ("True", "False")]
        agree = sum((r["flag"] == "True") == (float(r["tre_mean"]) < 2) for r in flagged)
        wrong = sum(r["flag"] == "True" and float(r["tre_mean"]) >= 2 for r in flagged)
        ratio = [float(r["seconds"]) / ref[r["case"]] for r in rs if ref.get(r["case"])]
        print(f"| {m} | {len(rs)} | {np.mean(t < 2):.0%} ({int((t < 2).sum())}/{len(t)}) | {np.median(t):.2f} mm | "
              f"{np.percentile(t, 95):.2f} mm | "
              + (f"{agree / len(flagged):.0%} ({agree}/{len(flagged)}) | {wrong} | " if flagged else "(no flag) | | ")
              + f"{np.median(ratio):.2f}x (median {np.median([float(r['seconds']) for r in rs]):.2f} s) |")


def main(folder):
    rows = [r for r in csv.DictReader(open(Path(folder) / "results.csv")) if not r.get("error")]
    exact = [r for r in rows if r["source"] not in UNCERTAIN]
    table(exact, f"{folder}: exact-truth cases")
    table([r for r in exact if r["held_out"] == "True"], f"{folder}: the held-out patient")
    table([r for r in exact if r["held_out"] != "True"], f"{folder}: the tuning patients")


if __name__ == "__main__":
    for f in sys.argv[1:]:
        main(f)

"""End-to-end accuracy of `mmreg register` (translator -> registration -> polish) on simulated cases.

Unlike `mmreg evaluate` (which feeds the registration a perfect synthetic T2 rendered from the real
T2 to isolate the registration), this runs the whole pipeline on the coronal **ceT1**, so it measures
what a user gets, GAN included. For method `ours` with `--polish auto`, report.json keeps the NCC result
before the MI polish, so one run gives both "without polish" and "with polish" numbers.

    python benchmarks/bench_pipeline.py --cases 12 --translators default,none --out /tmp/bench_pipeline

Prints a markdown table and writes results.csv. Needs ../shared/data (the BraTS sources).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--sources", default="TCGA-DU-7294,BraTSorch-case,BraTS-MET-00110,TCGA-FG-6692",
                    help="BraTS sources, cycled; TCGA-DU-7294 is held out of GAN training")
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--translators", default="default,none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--out", default="bench_pipeline")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from MultimodalRegistrationLib import metrics
    from MultimodalRegistrationLab import simulate
    from MultimodalRegistrationLib.pipeline import Params, run_case

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = args.sources.split(",")
    loaded = {}
    rows = []
    for i in range(args.cases):
        name = sources[i % len(sources)]
        if name not in loaded:
            loaded[name] = simulate.load_brats_source(name)
        case = simulate.simulate_case(loaded[name], seed=args.seed0 + i, params=args.preset)
        cdir = out / f"case{i:03d}"
        simulate.save_case(case, cdir)
        pts = metrics.overlap_points(case.coronal_cet1, case.axial_t2, case.moving_to_fixed)
        header = metrics.tre(np.eye(4), case.moving_to_fixed, pts)["mean"]
        for tr in args.translators.split(","):
            odir = cdir / f"out_{tr}"
            t0 = time.perf_counter()
            t = run_case(cdir / "coronal_ceT1.nii.gz", cdir / "axial_T2.nii.gz", odir,
                         params=Params(method="search-ncc", translator=tr, report_png=False))
            wall = time.perf_counter() - t0
            rep = json.loads((odir / "report.json").read_text())
            det = rep["registration"]["details"]
            ncc = det.get("ncc_result")
            M_ncc = np.asarray(ncc["moving_to_fixed_ras"]) if ncc else np.asarray(t["moving_to_fixed_ras"])
            tre_ncc = metrics.tre(M_ncc, case.moving_to_fixed, pts)["mean"]
            tre_final = metrics.tre(np.asarray(t["moving_to_fixed_ras"]), case.moving_to_fixed, pts)["mean"]
            row = {"case": i, "source": name, "translator": t["translator"].split(":")[0], "header_tre": header,
                   "tre_ncc_only": tre_ncc, "ncc_flag": bool(ncc["success"]) if ncc else bool(t["success"]),
                   "polished": ncc is not None, "tre_final": tre_final, "flag_final": bool(t["success"]),
                   "seconds": wall, "translate_s": rep["timings_s"].get("translate"),
                   "register_s": rep["timings_s"].get("register"), "polish_s": rep["timings_s"].get("polish", 0.0)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(out / "results.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    print(table(rows))
    return 0


def table(rows) -> str:
    lines = ["| translator | cases | success w/o polish (TRE<2 mm) | median TRE w/o polish | success final | "
             "median TRE final | p95 TRE final | flag agrees with TRE<2 mm | median time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tr in sorted({r["translator"] for r in rows}):
        rr = [r for r in rows if r["translator"] == tr]
        a = np.array([r["tre_ncc_only"] for r in rr])
        b = np.array([r["tre_final"] for r in rr])
        agree = np.mean([(r["tre_final"] < 2.0) == r["flag_final"] for r in rr])
        lines.append(f"| {tr} | {len(rr)} | {np.mean(a < 2) * 100:.0f}% | {np.median(a):.2f} | {np.mean(b < 2) * 100:.0f}% "
                     f"| {np.median(b):.2f} | {np.percentile(b, 95):.2f} | {agree * 100:.0f}% | "
                     f"{np.median([r['seconds'] for r in rr]):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end time and accuracy of `mmreg register` (defaults) against Greedy rigid NMI, in one run.

For each simulated real-contrast case (real ceT1/T1 coronal stack vs real T2 axial stack, exact truth;
same generator as `mmreg evaluate-real`), alternating on the same case:

* `mmreg register --coronal ... --axial ... --coronal-labels ... --axial-labels ... --out ...` as a fresh
  process: wall time includes process start, imports, loading, the translator, registration,
  resampling, label transfer, every output file and the figure. The registration stage alone is read
  from report.json (`timings_s.register`).
* Greedy (picsl-greedy's Python API in a fresh process, `-a -dof 6 -m NMI -ia-image-centers -n 100x50x10`):
  wall time of the process (start, import, reading the two NIfTI files, registration, writing the
  matrix), and the time of the `execute` call alone.

    python benchmarks/bench_e2e.py --per-source 2 --threads 2 --out benchmarks/results/e2e

Writes results.csv, summary.md and run.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

GREEDY = r"""
import sys, time
t0 = time.perf_counter()
from picsl_greedy import Greedy3D
g = Greedy3D()
t1 = time.perf_counter()
g.execute("-d 3 -a -dof 6 -m NMI -ia-image-centers -n 100x50x10 -threads {threads} -i {fixed} {moving} -o {out}")
print("EXECUTE_SECONDS", time.perf_counter() - t1)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-source", type=int, default=2)
    ap.add_argument("--sources", default="BraTSorch-case,TCGA-FG-6692,stroke,TCGA-DU-7294")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed0", type=int, default=30000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from MultimodalRegistrationLib import metrics
    from MultimodalRegistrationLab import simulate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.threads))
    rows = []
    for si, name in enumerate(args.sources.split(",")):
        src = simulate.load_brats_source(name)
        for j in range(args.per_source):
            seed = args.seed0 + 100 * si + j
            p = replace(simulate.PRESETS["bench"], header_rot_deg=8.0, header_shift_mm=15.0)
            case = simulate.simulate_case(src, seed=seed, params=p)
            cdir = out / "cases" / f"{name}_{seed}"
            simulate.save_case(case, cdir)
            pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
            tre = lambda M: metrics.tre(M, case.moving_to_fixed, pts)["mean"]  # noqa: E731
            cmd = ["mmreg", "register", "--coronal", str(cdir / "coronal_ceT1.nii.gz"),
                   "--axial", str(cdir / "axial_T2.nii.gz"), "--out", str(cdir / "mmreg"), "--progress", "none"]
            if (cdir / "coronal_labels.nii.gz").exists():
                cmd += ["--coronal-labels", str(cdir / "coronal_labels.nii.gz"),
                        "--axial-labels", str(cdir / "axial_labels.nii.gz")]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
            tj = json.loads((cdir / "mmreg" / "transform.json").read_text())
            rep = json.loads((cdir / "mmreg" / "report.json").read_text())
            rows.append({"case": f"{name}_{seed}", "source": name, "tool": "mmreg register (search-cr)",
                         "wall_s": round(wall, 3), "registration_s": rep["timings_s"]["register"],
                         "tre_mean": round(tre(np.asarray(tj["moving_to_fixed_ras"])), 3),
                         "flag": tj["success"], "stages": json.dumps(rep["timings_s"])})
            mat = cdir / "greedy.mat"
            code = GREEDY.format(threads=args.threads, fixed=cdir / "axial_T2.nii.gz",
                                 moving=cdir / "coronal_ceT1.nii.gz", out=mat)
            t0 = time.perf_counter()
            g = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            ex = float([ln for ln in g.stdout.splitlines() if ln.startswith("EXECUTE_SECONDS")][0].split()[1])
            M = np.linalg.inv(np.loadtxt(mat))        # Greedy: fixed -> moving RAS
            rows.append({"case": f"{name}_{seed}", "source": name, "tool": "greedy rigid NMI",
                         "wall_s": round(wall, 3), "registration_s": round(ex, 3),
                         "tre_mean": round(tre(M), 3), "flag": "", "stages": ""})
            for row in rows[-2:]:
                print(f"{row['case']:22s} {row['tool']:28s} wall {row['wall_s']:6.2f} s  registration "
                      f"{row['registration_s']:6.2f} s  TRE {row['tre_mean']:6.2f} mm", flush=True)
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| tool | cases | success (TRE < 2 mm) | median TRE | median wall time (process) | median registration time |",
             "|---|---|---|---|---|---|"]
    for tool in dict.fromkeys(r["tool"] for r in rows):
        rs = [r for r in rows if r["tool"] == tool]
        t = np.array([r["tre_mean"] for r in rs])
        lines.append(f"| {tool} | {len(rs)} | {np.mean(t < 2):.0%} | {np.median(t):.2f} mm | "
                     f"{np.median([r['wall_s'] for r in rs]):.2f} s | {np.median([r['registration_s'] for r in rs]):.2f} s |")
    ours = {r["case"]: r for r in rows if r["tool"].startswith("mmreg")}
    gr = {r["case"]: r for r in rows if r["tool"].startswith("greedy")}
    ratio = [gr[c]["registration_s"] / ours[c]["registration_s"] for c in ours]
    lines.append(f"\nRegistration stage, Greedy / ours, median of per-case ratios: {np.median(ratio):.2f}x")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    (out / "run.json").write_text(json.dumps({
        "command": "python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": commit, "threads": args.threads, "greedy": "picsl-greedy, -a -dof 6 -m NMI -ia-image-centers -n 100x50x10",
        "mmreg": "defaults (search-cr, bundled translator, labels, figure)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

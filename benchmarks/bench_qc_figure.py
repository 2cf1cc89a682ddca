"""Cost of the per-case QC outputs (report.png, qc_before/after.png, report.html) on the sample case.

Runs the pipeline once on the bundled sample case (no figure), then times, in this process:

* ``report.qc_figures`` (the three PNGs) --reps times: the first call (cold: Pillow/scipy imports,
  font loading) and the median of the warm calls, split into the header-only resampling of the
  "before" slices, PNG encoding, and the rest (slice picking, contours, composition);
* ``report_html.write_report`` for the single-case page;
* with ``--old-commit C``: the matplotlib ``case_figure`` of report.py at commit C (the figure this
  replaced), cold and warm, for comparison.

    python benchmarks/bench_qc_figure.py --reps 5 --old-commit 14dd5cf --out benchmarks/results/qc_figure

Writes results.json and prints a markdown table. Threads: torch/OpenMP limited to --threads.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MultimodalRegistration"))


def _git(*a) -> str:
    return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--old-commit", default=None, help="also time report.case_figure of this commit (matplotlib)")
    ap.add_argument("--out", default="bench_qc_figure")
    args = ap.parse_args(argv)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[v] = str(args.threads)
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)

    from MultimodalRegistrationLib import geometry, report, report_html
    from MultimodalRegistrationLib.pipeline import Params, read_transform, run_case
    from MultimodalRegistrationLib.sample import sample_paths
    from MultimodalRegistrationLib.volume import load_volume

    p = sample_paths()
    work = Path(tempfile.mkdtemp(prefix="bench_qc_"))
    t = time.perf_counter()
    transform = run_case(str(p["coronal"]), str(p["axial"]), str(work), coronal_labels=str(p["coronal_labels"]),
                         axial_labels=str(p["axial_labels"]), params=Params(report_png=False))
    pipeline_s = time.perf_counter() - t
    ax, cor = load_volume(p["axial"]), load_volume(p["coronal"])
    al = load_volume(p["axial_labels"], labels=True)
    ce = load_volume(work / "coronal_ceT1_on_axial.nii.gz")
    synth_on_ax = geometry.moving_onto_fixed(load_volume(work / "coronal_synthT2.nii.gz"), ax, read_transform(work))
    lab = load_volume(work / "coronal_labels_on_axial.nii.gz", labels=True)
    M = read_transform(work)

    # wrap the two parts we split out
    parts = {"resample_before": 0.0, "png_encode": 0.0}
    real_resample, real_save = report._resample_slices, report._save_png

    def timed(name, fn):
        def w(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[name] += time.perf_counter() - t0
        return w
    report._resample_slices = timed("resample_before", real_resample)
    report._save_png = timed("png_encode", real_save)
    runs = []
    figdir = work / "fig"
    for _ in range(args.reps):
        for k in parts:
            parts[k] = 0.0
        t0 = time.perf_counter()
        report.qc_figures(figdir, axial=ax, coronal=cor, cet1_on_axial=ce, moving_to_fixed=M, labels_on_axial=lab,
                          axial_labels=al, synth_on_axial=synth_on_ax, title="sample case")
        total = time.perf_counter() - t0
        runs.append({"total_s": total, **{k + "_s": v for k, v in parts.items()},
                     "other_s": total - sum(parts.values())})
    report._resample_slices, report._save_png = real_resample, real_save
    sizes = {f.name: f.stat().st_size for f in figdir.iterdir()}
    html_times = []
    row = report_html.case_row_from_dicts("sample", transform, {}, figdir, figdir)
    for _ in range(args.reps):
        t0 = time.perf_counter()
        report_html.write_report(figdir / "report.html", [row])
        html_times.append(time.perf_counter() - t0)

    res = {
        "what": "seconds to write the QC figures of one case (sample case, axial 352x352x22 at 0.5x0.5x4 mm)",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "commit": _git("rev-parse", "HEAD").strip(), "threads": args.threads, "reps": args.reps,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs (shared with other jobs)",
        "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "pipeline_s_without_figure": round(pipeline_s, 3),
        "qc_figures_cold": {k: round(v, 4) for k, v in runs[0].items()},
        "qc_figures_warm_median": {k: round(statistics.median(r[k] for r in runs[1:]), 4) for k in runs[0]}
        if len(runs) > 1 else None,
        "report_html_warm_median_s": round(statistics.median(html_times[1:] or html_times), 4),
        "png_bytes": sizes,
    }
    if args.old_commit:
        src = _git("show", f"{args.old_commit}:MultimodalRegistration/MultimodalRegistrationLib/report.py")
        old_path = work / "old_report.py"
        old_path.write_text(src.replace("from .volume import", "from MultimodalRegistrationLib.volume import"))
        spec = importlib.util.spec_from_file_location("old_report", old_path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)

        class R:
            method, metric, success, seconds = transform["method"], transform["metric"], transform["success"], 1.0
            subset_metrics, subset_index = transform.get("subset_metrics"), transform.get("subset_index")
        old_times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            old.case_figure(ax, ce, synth_on_ax, R(), work / "old_report.png", labels_on_axial=lab)
            old_times.append(time.perf_counter() - t0)
        res["old_matplotlib_case_figure"] = {"commit": args.old_commit, "cold_s": round(old_times[0], 4),
                                             "warm_median_s": round(statistics.median(old_times[1:] or old_times), 4),
                                             "png_bytes": (work / "old_report.png").stat().st_size}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    w = res["qc_figures_warm_median"] or res["qc_figures_cold"]
    print("| | cold (s) | warm median (s) |\n|---|---|---|")
    print(f"| qc_figures (3 PNGs) | {res['qc_figures_cold']['total_s']:.3f} | {w['total_s']:.3f} |")
    for k in ("resample_before_s", "png_encode_s", "other_s"):
        print(f"| - {k[:-2]} | {res['qc_figures_cold'][k]:.3f} | {w[k]:.3f} |")
    print(f"| report.html (1 case) | | {res['report_html_warm_median_s']:.4f} |")
    if "old_matplotlib_case_figure" in res:
        o = res["old_matplotlib_case_figure"]
        print(f"| old matplotlib report.png ({o['commit']}) | {o['cold_s']:.3f} | {o['warm_median_s']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

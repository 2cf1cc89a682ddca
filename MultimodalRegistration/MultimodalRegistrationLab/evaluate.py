"""``mmreg evaluate``: the registration accuracy benchmark on simulated cases with known ground truth.

Every case is drawn with :func:`simulate.simulate_case` from one of the real co-registered BraTS/TCIA
volumes (round robin over ``--sources``), seed ``seed0 + i``. A share of the cases (``--hard-fraction``)
gets large header offsets (up to ``--hard-rot`` degrees and ``--hard-shift`` mm) so that the methods
separate (NOTES.md). Every method gets the same inputs: the coronal stack rendered from T2 (the
stand-in for the GAN's synthetic T2, C'T2) and the axial T2; the paper's MI baseline ("mi") gets
the coronal ceT1, as in the paper. Per case and method we record the target registration error over
the overlap (mm), rotation/translation error of the residual transform, Dice of the coronal labels
transferred with the estimate against the same labels transferred with the ground truth, the
method's own success flag, and wall time. Results are appended to ``results.csv`` as they come (a
run can be resumed with ``--resume``); ``summary.json`` / ``summary.md`` hold the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from MultimodalRegistrationLib.threads import limit_process_threads

ALL_METHODS = ("ours", "paper", "mi", "elastix", "ants")
FIELDS = ["case", "source", "seed", "hard", "method", "tre_mean", "tre_median", "tre_p95", "tre_max",
          "rot_err_deg", "trans_err_mm", "dice", "metric", "flag_success", "success", "seconds", "error",
          "header_rot_deg", "header_shift_mm"]
SUCCESS_TRE_MM = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=50, help="number of simulated cases (default 50)")
    parser.add_argument("--methods", default="ours,paper,mi,elastix,ants",
                        help="comma-separated subset of " + ",".join(ALL_METHODS))
    parser.add_argument("--sources", default="BraTSorch-case,BraTS-MET-00110,TCGA-FG-6692,TCGA-DU-7294",
                        help="source volumes, used round robin")
    parser.add_argument("--preset", default="bench", choices=("bench", "paper", "fast"))
    parser.add_argument("--hard-fraction", type=float, default=0.5, help="share of cases with large header offsets")
    parser.add_argument("--hard-rot", type=float, default=15.0, help="max header rotation (deg) of hard cases")
    parser.add_argument("--hard-shift", type=float, default=30.0, help="max header shift (mm) of hard cases")
    parser.add_argument("--seed0", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0, help="index of the first case (to split a run)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every method (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device for ours/paper")
    parser.add_argument("--params", default="{}",
                        help='JSON: per-method parameter overrides, e.g. \'{"paper": {"pixel_mm": 3}}\'')
    parser.add_argument("--data", default=None, help="data root (default ../shared/data or MMREG_DATA)")
    parser.add_argument("--out", required=True, help="output folder (results.csv, summary.json, summary.md)")
    parser.add_argument("--resume", action="store_true", help="skip (case, method) pairs already in results.csv")
    parser.add_argument("--summarise-only", action="store_true",
                        help="run nothing: rebuild summary.json/summary.md from results.csv (and --include)")
    parser.add_argument("--include", nargs="*", default=[],
                        help="more results.csv files (e.g. from a parallel run) to merge into the summary")
    parser.add_argument("--time-budget", type=float, default=0.0,
                        help="stop starting new cases after this many seconds (0 = no limit)")


def case_params(i: int, preset: str, hard_fraction: float, hard_rot: float, hard_shift: float):
    from . import simulate
    p = simulate.PRESETS[preset]
    # hard cases spread evenly: case i is hard when floor((i+1) f) > floor(i f)
    hard = int(np.floor((i + 1) * hard_fraction)) > int(np.floor(i * hard_fraction))
    if hard:
        p = replace(p, header_rot_deg=hard_rot, header_shift_mm=hard_shift)
    return p, hard


def run_method(method: str, case, params: dict, device: str, seed: int):
    from MultimodalRegistrationLab import baselines
    from MultimodalRegistrationLib.registration import register
    if method in ("ours", "paper"):
        return register(case.coronal_t2, case.axial_t2, method, params=params, device=device, seed=seed)
    if method == "mi":
        return register(case.coronal_cet1, case.axial_t2, "mi", params=params, seed=seed)
    fn = baselines.BENCH_METHODS[method]
    return fn(case.coronal_t2, case.axial_t2, params=params, seed=seed)


def score(case, M: np.ndarray) -> dict:
    from MultimodalRegistrationLib import geometry, metrics
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    t = metrics.tre(M, case.moving_to_fixed, pts)
    center = geometry.apply(case.moving_to_fixed, pts.mean(axis=0)[None])[0] if len(pts) else case.axial_t2.center_world()
    rot, trans = metrics.transform_error(M, case.moving_to_fixed, center)
    dice = float("nan")
    if case.coronal_labels is not None:
        est = geometry.moving_onto_fixed(case.coronal_labels, case.axial_t2, M, order=0, dtype=np.int32).array
        ref = geometry.moving_onto_fixed(case.coronal_labels, case.axial_t2, case.moving_to_fixed, order=0,
                                         dtype=np.int32).array
        if (ref > 0).any():
            dice = metrics.mean_dice(est, ref)
    return {"tre_mean": t["mean"], "tre_median": t["median"], "tre_p95": t["p95"], "tre_max": t["max"],
            "rot_err_deg": rot, "trans_err_mm": trans, "dice": dice}


def summarise(rows: list[dict], methods) -> list[dict]:
    out = []
    for m in methods:
        r = [x for x in rows if x["method"] == m]
        if not r:
            continue
        tre = np.array([float(x["tre_mean"]) for x in r])
        tre = np.where(np.isfinite(tre), tre, np.inf)
        ok = tre < SUCCESS_TRE_MM
        flag = np.array([str(x["flag_success"]) in ("True", "true", "1") for x in r])
        hard = np.array([str(x["hard"]) in ("True", "true", "1") for x in r])
        fin = lambda a: np.asarray([v for v in a if np.isfinite(v)])  # noqa: E731
        out.append({
            "method": m, "n": len(r),
            "success_rate": float(ok.mean()),
            "success_rate_hard": float(ok[hard].mean()) if hard.any() else float("nan"),
            "tre_median_mm": float(np.median(tre)),
            "tre_p95_mm": float(np.percentile(tre, 95)),
            "rot_err_median_deg": float(np.median(fin([float(x["rot_err_deg"]) for x in r]))),
            "trans_err_median_mm": float(np.median(fin([float(x["trans_err_mm"]) for x in r]))),
            "dice_median": float(np.median(fin([float(x["dice"]) for x in r]))) if len(fin([float(x["dice"]) for x in r])) else float("nan"),
            "time_median_s": float(np.median([float(x["seconds"]) for x in r])),
            "flag_agreement": float((flag == ok).mean()),
        })
    return out


def _secs(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def table_markdown(summary: list[dict]) -> str:
    head = ("| method | cases | success (TRE<2mm) | success, hard cases | median TRE mm | p95 TRE mm | "
            "median rot err deg | median trans err mm | median Dice | median time s | flag agrees |")
    lines = [head, "|" + "---|" * 11]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['n']} | {100 * s['success_rate']:.1f}% | {100 * s['success_rate_hard']:.1f}% | "
            f"{s['tre_median_mm']:.2f} | {s['tre_p95_mm']:.2f} | {s['rot_err_median_deg']:.2f} | "
            f"{s['trans_err_median_mm']:.2f} | {s['dice_median']:.3f} | {_secs(s['time_median_s'])} | "
            f"{100 * s['flag_agreement']:.0f}% |")
    return "\n".join(lines)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def run_cli(args) -> int:
    from . import simulate
    from MultimodalRegistrationLib.errors import InputError

    limit_process_threads(int(args.threads))
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from {', '.join(ALL_METHODS)}")
    try:
        overrides = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise InputError(f"--params is not valid JSON: {exc}") from None
    for m in ("elastix", "ants"):
        if m in methods:
            try:
                __import__("itk" if m == "elastix" else "ants")
            except ImportError:
                print(f"note: {m} is not installed (pip install {'itk-elastix' if m == 'elastix' else 'antspyx'}); "
                      f"skipping it", file=sys.stderr)
                methods.remove(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    rows = _read_rows(csv_path) if (args.resume or args.summarise_only) else []
    if args.summarise_only:
        rows = [r for r in rows if r["method"] in methods]
        for extra in args.include:                       # "path/results.csv" or "path/results.csv:m1,m2"
            path, _, only = str(extra).partition(":")
            keep = set(only.split(",")) if only else set(ALL_METHODS)
            rows += [r for r in _read_rows(Path(path)) if r["method"] in keep]
        seen, uniq = set(), []
        for r in rows:                                   # one row per (case, method): the first wins
            key = (int(r["case"]), r["method"])
            if key not in seen:
                seen.add(key)
                uniq.append(r)
        rows = uniq
        rows = [_reflag(r) for r in rows]
        present = [m for m in ALL_METHODS if any(r["method"] == m for r in rows)]
        return _write_summary(out, rows, present, args, overrides)
    done = {(int(r["case"]), r["method"]) for r in rows}
    if not args.resume and csv_path.exists():
        csv_path.unlink()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    loaded = {}
    t_start = time.perf_counter()
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            w.writeheader()
        for i in range(int(args.first), int(args.first) + int(args.cases)):
            if args.time_budget and time.perf_counter() - t_start > args.time_budget:
                print(f"time budget reached after {i - int(args.first)} cases", file=sys.stderr)
                break
            todo = [m for m in methods if (i, m) not in done]
            if not todo:
                continue
            name = sources[i % len(sources)]
            if name not in loaded:
                loaded[name] = simulate.load_brats_source(name, args.data)
            p, hard = case_params(i, args.preset, args.hard_fraction, args.hard_rot, args.hard_shift)
            seed = int(args.seed0) + i
            case = simulate.simulate_case(loaded[name], seed=seed, params=p)
            for m in todo:
                err = ""
                t0 = time.perf_counter()
                try:
                    res = run_method(m, case, dict(overrides.get(m, {})), args.device, seed)
                    M, metric, flag = res.moving_to_fixed, res.metric, res.success
                    if res.details.get("error"):
                        err = str(res.details["error"])[:200]
                except Exception as exc:  # a crash of one method is a failure of that method, not of the run
                    M, metric, flag, err = np.eye(4), float("nan"), False, f"{type(exc).__name__}: {exc}"[:200]
                secs = time.perf_counter() - t0
                sc = score(case, np.asarray(M, dtype=np.float64))
                row = {"case": i, "source": name, "seed": seed, "hard": hard, "method": m, **sc,
                       "metric": metric, "flag_success": bool(flag),
                       "success": bool(np.isfinite(sc["tre_mean"]) and sc["tre_mean"] < SUCCESS_TRE_MM),
                       "seconds": secs, "error": err,
                       "header_rot_deg": case.meta["header_offset_rotation_deg"],
                       "header_shift_mm": case.meta["header_offset_translation_mm"]}
                w.writerow(row)
                fh.flush()
                rows.append({k: str(v) for k, v in row.items()})
                print(f"case {i:3d} {name:16s} {'hard' if hard else 'easy'} {m:8s} TRE {sc['tre_mean']:7.2f} mm "
                      f"rot {sc['rot_err_deg']:5.2f} deg  {secs:6.1f} s  flag={flag}" + (f"  [{err[:60]}]" if err else ""),
                      flush=True)
    return _write_summary(out, rows, methods, args, overrides)


def _reflag(row: dict) -> dict:
    """The method's success flag recomputed from its metric with the current documented threshold."""
    from MultimodalRegistrationLib import registration as R
    thr = {"ours": (R.SEARCH_NCC_SUCCESS_NCC, 1.0), "paper": (R.PAPER_SUCCESS_MSE, -1.0), "mi": (R.MI_SUCCESS_METRIC, -1.0)}
    m = row["method"]
    if m in thr:
        t, sgn = thr[m]
        v = float(row["metric"])
        row = dict(row, flag_success=str(bool(np.isfinite(v) and sgn * v >= sgn * t)))
    return row


def _write_summary(out: Path, rows, methods, args, overrides) -> int:
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    summary = summarise(rows, methods)
    md = table_markdown(summary)
    cmd = "mmreg evaluate " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "evaluate" else " ".join(sys.argv)
    info = {"command": cmd, "summary": summary, "success_definition": f"mean TRE over the overlap < {SUCCESS_TRE_MM} mm",
            "threads": int(args.threads), "preset": args.preset, "hard_fraction": args.hard_fraction,
            "hard_rot_deg": args.hard_rot, "hard_shift_mm": args.hard_shift, "sources": sources,
            "params": overrides, "platform": platform.platform(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count()}
    (out / "summary.json").write_text(json.dumps(info, indent=2))
    (out / "summary.md").write_text(f"Command: `{cmd}`\n\n{md}\n")
    print(md)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mmreg evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

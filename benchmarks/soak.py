"""Soak benchmark: many simulated cases through ``mmreg batch --jobs N``.

Reports crashes (must be 0), failures, peak memory and throughput, then re-runs the same command
to check that resuming skips every finished case.

    python benchmarks/soak.py --cases 100 --jobs 2 --work /tmp/mmreg_soak

Cases are simulated from the four co-registered BraTS/TCIA sources of ../shared/data (round robin,
seed = case number, preset ``fast`` unless --preset), written in the batch folder layout. ``--bad K``
adds K deliberately broken cases (truncated gzip, 2D, all-zero, swapped orientation, ...) that must
fail cleanly, each with its one-line error, without stopping the batch. The batch runs as a child
process (``python -m MultimodalRegistrationLib batch ...``); memory is sampled from /proc over the
child's whole process tree (sum of RSS) and from getrusage (largest single process).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MultimodalRegistration"))

SOURCES = ("BraTSorch-case", "BraTS-MET-00110", "TCGA-FG-6692", "TCGA-DU-7294")
_SRC = {}


def _simulate_one(args):
    i, folder, preset = args
    import warnings
    warnings.simplefilter("ignore")
    from MultimodalRegistrationLab import simulate
    name = SOURCES[i % len(SOURCES)]
    if name not in _SRC:
        _SRC[name] = simulate.load_brats_source(name)
    case = simulate.simulate_case(_SRC[name], seed=i, params=preset)
    simulate.save_case(case, folder)
    # keep only what the batch needs (and the ground truth)
    for f in ("coronal_T2.nii.gz", "axial_ceT1.nii.gz"):
        (Path(folder) / f).unlink(missing_ok=True)
    return i


def make_cases(inputs: Path, n: int, preset: str, jobs: int) -> float:
    t = time.perf_counter()
    todo = [(i, str(inputs / f"sim{i:03d}"), preset) for i in range(n)
            if not (inputs / f"sim{i:03d}" / "ground_truth.json").exists()]
    if todo:
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            for k, _ in enumerate(ex.map(_simulate_one, todo), 1):
                if k % 10 == 0 or k == len(todo):
                    print(f"  simulated {k}/{len(todo)}", file=sys.stderr, flush=True)
    return time.perf_counter() - t


def make_bad_cases(inputs: Path, k: int) -> list[str]:
    """Broken inputs that must each fail cleanly (the list cycles if k is larger)."""
    import nibabel as nib
    import numpy as np

    good = inputs / "sim000"
    cor, ax = good / "coronal_ceT1.nii.gz", good / "axial_T2.nii.gz"
    kinds = ["truncated", "not_nifti", "two_d", "all_zero", "swapped", "labels_other_grid", "nonint_labels"]
    made = []
    for j in range(k):
        kind = kinds[j % len(kinds)]
        d = inputs / f"bad{j:02d}_{kind}"
        d.mkdir(parents=True, exist_ok=True)
        c_out, a_out = d / "coronal_ceT1.nii.gz", d / "axial_T2.nii.gz"
        c_out.write_bytes(cor.read_bytes())
        a_out.write_bytes(ax.read_bytes())
        if kind == "truncated":
            data = cor.read_bytes()
            c_out.write_bytes(data[: len(data) // 2])
        elif kind == "not_nifti":
            a_out.write_bytes(b"this is not an image\n" * 10)
        elif kind == "two_d":
            nib.save(nib.Nifti1Image(np.random.rand(32, 32).astype(np.float32), np.eye(4)), str(c_out))
        elif kind == "all_zero":
            img = nib.load(str(ax))
            nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(a_out))
        elif kind == "swapped":
            c_out.write_bytes(ax.read_bytes())
            a_out.write_bytes(cor.read_bytes())
        elif kind == "labels_other_grid":
            img = nib.load(str(ax))
            nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint16), img.affine), str(d / "coronal_labels.nii.gz"))
        elif kind == "nonint_labels":
            img = nib.load(str(cor))
            nib.save(nib.Nifti1Image(np.random.rand(*img.shape).astype(np.float32), img.affine),
                     str(d / "coronal_labels.nii.gz"))
        made.append(d.name)
    return made


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants from /proc."""

    def __init__(self, pid: int, period: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.period, self.peak, self.peak_procs = pid, period, 0, 0
        self.stop = threading.Event()

    def _tree(self):
        children = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
        out, stack = [], [self.pid]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(children.get(p, []))
        return out

    def run(self):
        while not self.stop.is_set():
            total = 0
            procs = self._tree()
            for p in procs:
                try:
                    with open(f"/proc/{p}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) * 1024
                                break
                except OSError:
                    continue
            if total > self.peak:
                self.peak, self.peak_procs = total, len(procs)
            self.stop.wait(self.period)


def run_batch(inputs: Path, out: Path, jobs: int, extra: list[str]) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "MultimodalRegistration") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "MultimodalRegistrationLib", "batch", str(inputs), "--out", str(out),
           "--jobs", str(jobs), "--progress", "json", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    last = {}
    err_lines = []
    for line in proc.stderr:
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("done") != last.get("done"):
                print(f"  {ev['done']}/{ev['total']} cases, eta {ev.get('eta_s', '?')} s", file=sys.stderr, flush=True)
            last = ev
        else:
            err_lines.append(line.rstrip())
    stdout = proc.stdout.read()
    rc = proc.wait()
    wall = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    return {"cmd": " ".join(cmd), "rc": rc, "wall_s": wall, "peak_tree_rss": sampler.peak,
            "peak_tree_procs": sampler.peak_procs, "stdout": stdout.strip(), "stderr": err_lines}


def accuracy(inputs: Path, out: Path, rows: list[dict]) -> dict:
    """Error of each finished case against its ground truth: mean displacement over the coronal grid's corners."""
    import nibabel as nib
    import numpy as np

    errs, ident, flagged = [], [], []
    for r in rows:
        gt = inputs / r["case_id"] / "ground_truth.json"
        tj = out / r["case_id"] / "transform.json"
        if r["status"] not in ("done", "skipped") or not gt.exists() or not tj.exists():
            continue
        G = np.asarray(json.loads(gt.read_text())["moving_to_fixed_ras"])
        M = np.asarray(json.loads(tj.read_text())["moving_to_fixed_ras"])
        img = nib.load(str(inputs / r["case_id"] / "coronal_ceT1.nii.gz"))
        sh = np.asarray(img.shape) - 1
        corners = np.array([[i, j, k, 1.0] for i in (0, sh[0] / 2, sh[0]) for j in (0, sh[1] / 2, sh[1])
                            for k in (0, sh[2] / 2, sh[2])])
        pts = corners @ img.affine.T
        errs.append(float(np.mean(np.linalg.norm((pts @ M.T - pts @ G.T)[:, :3], axis=1))))
        ident.append(float(np.mean(np.linalg.norm((pts - pts @ G.T)[:, :3], axis=1))))
        flagged.append(r["success"] == "false")
    if not errs:
        return {}
    e, i0, fl = np.asarray(errs), np.asarray(ident), np.asarray(flagged)
    return {"n": len(e), "median_mm": round(float(np.median(e)), 2), "p90_mm": round(float(np.percentile(e, 90)), 2),
            "max_mm": round(float(e.max()), 2), "under_2mm": int((e < 2).sum()),
            "header_identity_median_mm": round(float(np.median(i0)), 2),
            "worse_than_identity": int((e > i0).sum()),
            "success_flag_but_over_5mm": int(((e > 5) & ~fl).sum()),
            "metric": "mean displacement (mm) over the 27 corner/edge/centre points of the coronal grid"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--bad", type=int, default=0, help="extra broken cases that must fail cleanly")
    ap.add_argument("--work", default="/tmp/mmreg_soak", help="inputs in WORK/inputs, outputs in WORK/out")
    ap.add_argument("--preset", default="fast", choices=("fast", "bench", "paper"))
    ap.add_argument("--method", default="ours")
    ap.add_argument("--translator", default="none")
    ap.add_argument("--executor", default="local", choices=("local", "dask"),
                    help="mmreg batch --executor (dask: a LocalCluster of --jobs workers)")
    ap.add_argument("--quick", action="store_true", help="cheap registration settings (machinery check only)")
    ap.add_argument("--fresh", action="store_true", help="delete WORK/out first")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="only recompute the accuracy of an existing WORK/out (no simulation, no batch)")
    a = ap.parse_args(argv)

    work = Path(a.work)
    inputs, out = work / "inputs", work / "out"
    inputs.mkdir(parents=True, exist_ok=True)
    if a.fresh and out.exists():
        import shutil
        shutil.rmtree(out)
    if a.accuracy_only:
        rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
        print(json.dumps(accuracy(inputs, out, rows), indent=2))
        return 0
    print(f"simulating {a.cases} cases (preset {a.preset}) into {inputs}", file=sys.stderr)
    sim_s = make_cases(inputs, a.cases, a.preset, a.jobs)
    bad = make_bad_cases(inputs, a.bad) if a.bad else []
    extra = ["--method", a.method, "--translator", a.translator, "--no-figure", "--device", "cpu",
             "--executor", a.executor]
    if a.quick:
        extra += ["--param", "init=header", "--param", "levels_mm=[4.0]", "--param", "iterations=[8]",
                  "--param", "max_points=[20000]"]

    load0 = os.getloadavg()
    print(f"batch: {a.cases} + {len(bad)} bad cases, --jobs {a.jobs}", file=sys.stderr)
    first = run_batch(inputs, out, a.jobs, extra)
    load1 = os.getloadavg()
    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    n_run = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    crashes = [r for r in failed if r["error"].startswith("internal error") or "worker process" in r["error"]]
    bad_rows = {r["case_id"]: r for r in rows if r["case_id"] in bad}
    bad_ok = [k for k, r in bad_rows.items() if r["status"] == "failed" and not r["error"].startswith("internal")]
    unexpected_fail = [r for r in failed if r["case_id"] not in bad]
    secs = [float(r["seconds"]) for r in n_run if r["seconds"]]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)

    print("resume: same command again (every finished case must be skipped)", file=sys.stderr)
    second = run_batch(inputs, out, a.jobs, extra)
    rows2 = list(csv.DictReader(open(out / "summary.csv", newline="")))
    rerun = [r["case_id"] for r in rows2 if r["status"] == "done"]

    res = {
        "command": first["cmd"],
        "cases": a.cases, "bad_cases": len(bad), "jobs": a.jobs, "executor": a.executor, "preset": a.preset, "method": a.method,
        "translator": a.translator, "quick": a.quick,
        "exit_code": first["rc"],
        "finished": len(n_run), "flagged_unsuccessful": sum(r["success"] == "false" for r in n_run),
        "failed": len(failed), "unexpected_failures": [(r["case_id"], r["error"]) for r in unexpected_fail],
        "crashes": len(crashes), "crash_details": [(r["case_id"], r["error"]) for r in crashes],
        "bad_cases_failed_cleanly": f"{len(bad_ok)}/{len(bad)}",
        "bad_case_errors": {k: r["error"] for k, r in bad_rows.items()},
        "wall_s": round(first["wall_s"], 1),
        "throughput_cases_per_min": round(60.0 * (len(n_run) + len(failed)) / first["wall_s"], 2),
        "case_seconds_median": round(sorted(secs)[len(secs) // 2], 2) if secs else None,
        "peak_rss_tree_gib": round(first["peak_tree_rss"] / 1024**3, 3),
        "peak_rss_single_process_gib": round(usage.ru_maxrss * 1024 / 1024**3, 3),
        "loadavg_before_after": [round(load0[0], 2), round(load1[0], 2)],
        "cpu_count": os.cpu_count(),
        "simulation_s": round(sim_s, 1),
        "resume": {"exit_code": second["rc"], "wall_s": round(second["wall_s"], 1), "re_run_cases": rerun},
        "accuracy_vs_ground_truth": accuracy(inputs, out, rows),
        "batch_stdout": first["stdout"],
    }
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    ok = res["crashes"] == 0 and len(bad_ok) == len(bad) and not rerun
    print("SOAK " + ("PASSED" if ok else "FAILED"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

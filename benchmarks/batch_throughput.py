"""Batch throughput: cases per minute and peak memory per worker for 1, 2 and 4 workers.

Uses the soak benchmark's cases (benchmarks/soak.py: simulated from the BraTS/TCIA sources of
../shared/data, preset ``fast``) and runs ``mmreg batch`` as a child process for each worker count
and executor, from an empty OUT each time. Memory is sampled from /proc every 0.2 s: the peak RSS
of every process of the batch's tree is kept, and "per worker" is the largest peak among the
processes that ran cases (the worker processes; with --jobs 1 and the local executor the batch
process itself, which runs the cases in-process).

    python benchmarks/batch_throughput.py --cases 6 --runs local:1,local:2,local:4,dask:2 \
        --work /tmp/mmreg_tp --out benchmarks/results/batch_throughput

--jobs is capped at the CPU cores available (mmreg batch's own rule), so on a 2-core machine
"4 workers" runs 2: the results say which count actually ran (``workers_used``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "MultimodalRegistration"))

import soak  # noqa: E402  (make_cases, the soak benchmark's inputs)


class PerProcessPeaks(threading.Thread):
    """Peak RSS of each process in the tree under ``pid`` (sampled from /proc)."""

    def __init__(self, pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.tree_peak = 0
        self.stop = threading.Event()
        self._tree = soak.TreeSampler(pid)._tree

    def run(self):
        while not self.stop.is_set():
            total = 0
            for p in self._tree():
                try:
                    with open(f"/proc/{p}/status") as f:
                        rss = 0
                        for line in f:
                            if line.startswith("VmRSS:"):
                                rss = int(line.split()[1]) * 1024
                                break
                    if p not in self.names:
                        with open(f"/proc/{p}/cmdline", "rb") as f:
                            self.names[p] = f.read().replace(b"\0", b" ").decode(errors="replace")[:160]
                except OSError:
                    continue
                total += rss
                self.peaks[p] = max(self.peaks.get(p, 0), rss)
            self.tree_peak = max(self.tree_peak, total)
            self.stop.wait(self.period)


def one_run(inputs: Path, out: Path, workers: int, executor: str, extra: list[str]) -> dict:
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "MultimodalRegistration") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "MultimodalRegistrationLib", "batch", str(inputs), "--out", str(out),
           "--jobs", str(workers), "--executor", executor, "--progress", "json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = PerProcessPeaks(proc.pid)
    sampler.start()
    notes = []
    for line in proc.stderr:
        if not line.startswith("{") and line.strip():
            notes.append(line.rstrip())
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    done = [r for r in rows if r["status"] == "done"]
    marker_threads = set()
    for r in done:
        try:
            marker_threads.add(json.loads((out / r["case_id"] / ".mmreg_done.json").read_text()).get("threads"))
        except (OSError, ValueError):
            pass
    # processes that ran cases: spawned local workers / dask worker processes; else the batch itself
    runners = {p: v for p, v in sampler.peaks.items()
               if "spawn_main" in sampler.names.get(p, "") and "resource_tracker" not in sampler.names.get(p, "")}
    if not runners:
        runners = {proc.pid: sampler.peaks.get(proc.pid, 0)}
    capped = [n for n in notes if "capped" in n or "lowered" in n]
    used = workers
    for n in capped:
        for tok in n.split():
            if tok.isdigit():
                used = min(used, int(tok))
    return {
        "executor": executor, "workers_requested": workers, "workers_used": used, "notes": notes[-5:],
        "exit_code": rc, "cases_done": len(done), "cases_failed": sum(r["status"] == "failed" for r in rows),
        "wall_s": round(wall, 2), "cases_per_min": round(60.0 * len(done) / wall, 2),
        "median_case_s": round(sorted(float(r["seconds"]) for r in done)[len(done) // 2], 2) if done else None,
        "torch_threads_per_case": sorted(t for t in marker_threads if t is not None),
        "peak_rss_per_worker_gib": round(max(runners.values()) / 1024**3, 3),
        "peak_rss_batch_process_gib": round(sampler.peaks.get(proc.pid, 0) / 1024**3, 3),
        "peak_rss_tree_gib": round(sampler.tree_peak / 1024**3, 3),
        "n_processes_seen": len(sampler.peaks), "command": " ".join(cmd),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--executors", default="local")
    ap.add_argument("--runs", default=None, help="explicit EXECUTOR:WORKERS list, e.g. local:1,local:2,dask:2 "
                                                 "(instead of --executors x --workers)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per case (pinned, default 1)")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--translator", default="none")
    ap.add_argument("--method", default="ours")
    ap.add_argument("--quick", action="store_true", help="cheap registration settings (a smoke test of this script)")
    ap.add_argument("--work", default="/tmp/mmreg_throughput")
    ap.add_argument("--out", default="batch_throughput")
    a = ap.parse_args(argv)
    work = Path(a.work)
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    sim_s = soak.make_cases(inputs, a.cases, a.preset, 2)
    for extra_dir in sorted(p for p in inputs.iterdir() if p.is_dir()):
        if not extra_dir.name.startswith("sim") or int(extra_dir.name[3:]) >= a.cases:
            shutil.rmtree(extra_dir)   # only the first --cases cases
    extra = ["--method", a.method, "--translator", a.translator, "--no-figure", "--device", "cpu",
             "--threads", str(a.threads)]
    if a.quick:
        extra += ["--param", "init=header", "--param", "levels_mm=[4.0]", "--param", "iterations=[8]",
                  "--param", "max_points=[20000]"]
    runs = []
    plan = ([(r.split(":")[0], int(r.split(":")[1])) for r in a.runs.split(",")] if a.runs else
            [(ex, int(w)) for ex in a.executors.split(",") for w in a.workers.split(",")])
    for ex, w in plan:
        if True:
            print(f"{ex}: {w} worker(s)...", file=sys.stderr, flush=True)
            load0 = os.getloadavg()[0]
            r = one_run(inputs, work / f"out_{ex}_{w}", w, ex, extra)
            r["loadavg_1min_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            runs.append(r)
            print(f"  {r['cases_done']} cases in {r['wall_s']} s = {r['cases_per_min']} cases/min, "
                  f"{r['workers_used']} worker(s) used, peak {r['peak_rss_per_worker_gib']} GiB per worker",
                  file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res = {
        "what": "cases per minute (finished cases / wall time of `mmreg batch`, from an empty OUT) and peak RSS "
                "of the largest case-running process, per worker count and executor",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "commit": commit, "quick": a.quick, "cases": a.cases, "preset": a.preset, "method": a.method, "translator": a.translator,
        "torch_threads_per_case": a.threads, "simulation_s": round(sim_s, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, shared with other jobs",
        "runs": runs,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print("| executor | workers requested | used | cases/min | median case (s) | peak RSS per worker (GiB) |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['executor']} | {r['workers_requested']} | {r['workers_used']} | {r['cases_per_min']} | "
              f"{r['median_case_s']} | {r['peak_rss_per_worker_gib']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

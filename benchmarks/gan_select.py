"""Checkpoint selection for issue 12 on NON-held-out data only (never TCGA-DU-7294 or stroke).

Evaluates each checkpoint with ``evaluate_gan.evaluate`` on the selection cases (default: a fresh
MNI152 render with head, the same render brain-only, and the with-skull native scan of training
patient TCGA-FG-6692) and ranks by the mean ceT1->T2 head NCC over the cases, with the number of
cases whose CSF check passes as the first key. Writes ``selection.json``.

    OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 benchmarks/gan_select.py \
        --checkpoints RUN/iter_*_nicegan_cet1_t2.safetensors default --out benchmarks/results/gan_selection
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from MultimodalRegistrationLab.evaluate_gan import evaluate
from MultimodalRegistrationLib.translate import load_translator

HELD_OUT = ("TCGA-DU-7294", "stroke")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--cases", nargs="+", default=["render:101", "render:102:stripped",
                                                  "native:TCGA-FG-6692:withskull"])
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if any(c in HELD_OUT for c in a.cases):
        sys.exit("selection must not use the held-out cases")
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    prev = {}
    if (out / "selection.json").exists():  # incremental: keep rows of checkpoints already evaluated
        old = json.loads((out / "selection.json").read_text())
        if old.get("cases") == a.cases:
            prev = {(r["checkpoint"], r.get("sha256")): r for r in old["rows"]}
    rows = list(prev.values())
    for ck in a.checkpoints:
        t = time.time()
        tr = load_translator(ck, "cpu")
        if (str(ck), tr.meta.get("sha256")) in prev:
            continue
        res = evaluate(tr, a.cases, None)
        pc = res["per_case"]
        ncc = {c: pc[c]["summary"]["ncc_T2_generated"]["mean"] for c in a.cases}
        csf = {c: bool(pc[c].get("csf_check", {}).get("csf_above_gm_and_wm", False)) for c in a.cases}
        psnr = {c: pc[c]["summary"]["psnr_T2_generated"]["mean"] for c in a.cases}
        row = {"checkpoint": str(ck), "sha256": tr.meta.get("sha256"), "commit": subprocess.run(
                   ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
               "normalisation": (tr.meta.get("normalisation") or {}).get("method"), "iterations": (tr.meta.get("training") or {}).get("iterations"),
               "ncc": ncc, "mean_ncc": float(np.mean(list(ncc.values()))), "csf_pass": csf,
               "n_csf_pass": int(sum(csf.values())), "psnr_T2": psnr, "seconds": round(time.time() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: (r["n_csf_pass"], r["mean_ncc"]))
    res = {"command": "OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 " + " ".join(sys.argv),
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "threads": 1, "cases": a.cases, "rule": "max (cases passing the CSF check, mean head NCC)",
           "rows": rows, "selected": best["checkpoint"]}
    (out / "selection.json").write_text(json.dumps(res, indent=2) + "\n")
    print("selected", best["checkpoint"])


if __name__ == "__main__":
    main()

"""Prepared for a future accelerator run (issue 12; NOT run yet: no device was lent to that task).

1. Measures the training iteration rate of candidate NICE-GAN sizes on the device (``--probe-its``
   iterations each, after a warm-up), largest first: the paper's 256 px / 64 ch / 6 residual blocks,
   then smaller ones.
2. Picks the largest that reaches ``--min-its`` iterations in the time left of ``--budget-s``
   (default 600 s of training after start-up), initialising from ``--init-from`` when the
   architecture matches (the bundled 128 px / 24 ch checkpoint only fits a 128/24/3 run).
3. Trains it until the budget is spent, writing ``$OUT/run/`` (state.pt, losses, samples) and a
   checkpoint every ``--export-every`` iterations plus the last one, so that they come back.

Training data: a ``synth`` .npz built on the CPU machine and carried along (the device has no
../shared/data), e.g. for 256 px:

    OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 -m MultimodalRegistrationLab.synth \\
        --out gan_data/train256_v4_tissuepeak.npz --size 256 --n-synth 16 --slices-per-synth 40 \\
        --slices-per-real 160 --seed 4 --normalisation tissue-peak --contrast-jitter 0.25 \\
        --unpaired-cet1 ../shared/data/tcia_vs/VS-SEG-001_t1c_mprage.nii.gz --slices-per-unpaired 300

then on the device (``run`` tool, carry ``gan_data``):

    PYTHONPATH=MultimodalRegistration python3 benchmarks/gan_device_train.py \\
        --data gan_data/train256_v4_tissuepeak.npz --budget-s 560

Afterwards evaluate the returned checkpoint here with ``mmreg evaluate-gan`` (held-out
TCGA-DU-7294 and stroke) before bundling anything.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

CANDIDATES = [  # (ch, n_res): largest first; slice size comes from the data
    (64, 6), (48, 6), (48, 4), (32, 4), (24, 3),
]


def main(argv=None) -> int:
    t_start = time.monotonic()
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--out", default=os.environ.get("OUT", "gan_device_out"))
    p.add_argument("--budget-s", type=float, default=560.0, help="wall seconds for probing + training")
    p.add_argument("--probe-its", type=int, default=20)
    p.add_argument("--min-its", type=int, default=6000, help="a candidate must reach this many iterations")
    p.add_argument("--export-every", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--unpaired-prob", type=float, default=0.2)
    p.add_argument("--init-from", default=None)
    a = p.parse_args(argv)

    import torch

    from MultimodalRegistrationLib.nicegan import NiceGanConfig
    from MultimodalRegistrationLab.synth import load_unpaired
    from MultimodalRegistrationLab.train import Trainer, load_training_sets
    from MultimodalRegistrationLib.translate import NORMALISATION

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    A, B, sources, recipe = load_training_sets(a.data)
    rec = recipe if isinstance(recipe, dict) else recipe[0]
    norm = rec.get("normalisation", "percentile")
    norm = NORMALISATION if norm == "percentile" else norm
    unp = [u for u in (load_unpaired(d) for d in a.data) if u is not None]
    U = np.concatenate(unp) if unp else None
    size = int(A.shape[-1])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
              "data": [Path(d).name for d in a.data], "pairs": int(len(A)), "size": size, "probe": []}
    chosen = None
    for ch, n_res in CANDIDATES:
        cfg = NiceGanConfig(ch=ch, n_res=n_res, img_size=size)
        tr = Trainer(A, B, out / f"probe_{ch}_{n_res}", cfg, lr=a.lr, batch_size=a.batch_size, device=dev,
                     normalisation=norm, A_unpaired=U, unpaired_prob=a.unpaired_prob)
        tr.step(0)  # warm-up (cuDNN autotune, allocations)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.monotonic()
        for i in range(1, a.probe_its + 1):
            tr.step(i)
        if dev == "cuda":
            torch.cuda.synchronize()
        rate = a.probe_its / (time.monotonic() - t)
        left = a.budget_s - (time.monotonic() - t_start)
        row = {"ch": ch, "n_res": n_res, "its_per_s": round(rate, 2), "seconds_left": round(left, 1),
               "reachable_its": int(rate * max(0.0, left - 20))}
        report["probe"].append(row)
        print(json.dumps(row), flush=True)
        if row["reachable_its"] >= a.min_its:
            chosen = (cfg, rate)
            break
    if chosen is None:  # none reaches --min-its: the smallest, at its measured rate
        cfg, rate = NiceGanConfig(ch=CANDIDATES[-1][0], n_res=CANDIDATES[-1][1], img_size=size), rate
    else:
        cfg, rate = chosen
    cmd = "python3 " + " ".join(sys.argv)
    tr = Trainer(A, B, out / "run", cfg, lr=a.lr, batch_size=a.batch_size, device=dev, normalisation=norm,
                 A_unpaired=U, unpaired_prob=a.unpaired_prob, command=cmd,
                 data_desc={"file": " + ".join(Path(d).name for d in a.data), "pairs": int(len(A)),
                            "recipe": recipe, "unpaired_cet1_slices": int(len(U)) if U is not None else 0})
    if a.init_from:
        tr.init_from(a.init_from)
    tr.commands.append(cmd)
    left = a.budget_s - (time.monotonic() - t_start) - 15
    its = max(1, int(rate * left))
    report.update(chosen={"ch": cfg.ch, "n_res": cfg.n_res, "img_size": size}, planned_iterations=its)
    print(json.dumps({"training": report["chosen"], "iterations": its}), flush=True)
    tr.run(its, log_every=100, sample_every=max(500, its // 4), save_every_s=120, export_every=a.export_every,
           log=lambda m: print(m, flush=True))
    report.update(iterations=tr.iteration, train_wall_s=round(tr.wall, 1),
                  total_wall_s=round(time.monotonic() - t_start, 1))
    (out / "device_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

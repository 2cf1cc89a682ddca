#!/usr/bin/env bash
# Issue 12 lever ablation: run4's paired training set (benchmarks/gan_data_v4.sh steps 1-2) WITHOUT the
# SynthSeg-style contrast randomisation. D: an output folder outside the repository. ~10 min on one shared core.
#
# Same seed (4), same real cases, same 16 renders x 40 slices, same strip fraction, tissue-peak normalisation.
# --contrast-jitter is 1e-9, not 0: synth draws the jitter's random numbers only when the jitter is > 0, so
# 0 would shift the random stream after the first render's first tissue and give other renders (anatomy
# variants, tumours, sequence parameters) than train128_v4b. With 1e-9 the same numbers are drawn and the
# multipliers exp(1e-9 * N(0,1)) and the ceT1 gamma equal 1 to float32 precision, so every render has v4b's
# draws (tumour, TR/TE, ...) without the contrast randomisation (benchmarks/gan_ablation_check_data.py).
# Step 1 leaves out v4's --unpaired-cet1 part (extracted after the renders, so it does not change the paired
# slices, and v4's step 2 dropped it anyway).
# NOT identical to v4b apart from the jitter: synth's slice picking changed after v4 was built (in commit baa2593:
# a slice needs foreground on both contrasts), so the slice positions differ, in the real BraTS slices too
# (same 3 patients, 160 slices each), no empty-target slice is left for step 2 to drop, and the set has
# 1120 pairs instead of 1096.
set -euo pipefail
D=${D:-/work/gan12_runs/data}
export OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-MultimodalRegistration}
python3 -m MultimodalRegistrationLab.synth --out "$D/train128_v4nj_tissuepeak.npz" --n-synth 16 \
    --slices-per-synth 40 --slices-per-real 160 --seed 4 --strip-fraction 0.5 --normalisation tissue-peak \
    --contrast-jitter 1e-9
# 2. the same filter as gan_data_v4.sh step 2 (T2 slice with < 2 % of pixels above 0.05 dropped)
python3 - "$D" <<'PY'
import json, sys
import numpy as np
d = sys.argv[1]
with np.load(f"{d}/train128_v4nj_tissuepeak.npz") as z:
    A, B, src, rec = z["A"], z["B"], z["source"], json.loads(str(z["recipe"]))
keep = (B.astype(np.float32) > 0.05).mean((1, 2)) >= 0.02
rec["filtered"] = {"dropped_empty_target_slices": int((~keep).sum()),
                   "rule": "T2 slice with < 2% of pixels above 0.05 (noise-only slice outside the head of a full-head render)",
                   "tool": "benchmarks/gan_data_v4_nojitter.sh"}
np.savez_compressed(f"{d}/train128_v4bnj_tissuepeak.npz", A=A[keep], B=B[keep], source=src[keep], recipe=json.dumps(rec))
print(int(keep.sum()), "pairs kept,", int((~keep).sum()), "dropped")
PY

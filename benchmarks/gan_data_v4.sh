#!/usr/bin/env bash
# Issue 12: the training data of the tissue-peak fine-tune (run4), exactly as built (1 CPU thread).
# D: an output folder outside the repository. About 12 minutes on one shared core.
set -euo pipefail
D=${D:-/work/gan12_runs/data}
export OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-MultimodalRegistration}
# 1. 3 real BraTS pairs x 160 slices (not TCGA-DU-7294) + 16 MNI152 renders x 40 slices, contrast
#    randomisation 0.25, half brain-only, tissue-peak normalisation. (Its --unpaired-cet1 part was
#    built before synth resampled anisotropic volumes to 1 mm; those distorted slices are not used:
#    the trainer reads A_unpaired from step 3's file only, see below.)
python3 -m MultimodalRegistrationLab.synth --out "$D/train128_v4_tissuepeak.npz" --n-synth 16 \
    --slices-per-synth 40 --slices-per-real 160 --seed 4 --strip-fraction 0.5 --normalisation tissue-peak \
    --contrast-jitter 0.25 --unpaired-cet1 ../shared/data/tcia_vs/VS-SEG-001_t1c_mprage.nii.gz --slices-per-unpaired 300
# 2. drop the 24 slices whose T2 is empty (noise-only slices outside the head of full-head renders,
#    picked before synth required foreground on both contrasts) and the distorted unpaired slices
python3 - "$D" <<'PY'
import json, sys
import numpy as np
d = sys.argv[1]
with np.load(f"{d}/train128_v4_tissuepeak.npz") as z:
    A, B, src, rec = z["A"], z["B"], z["source"], json.loads(str(z["recipe"]))
keep = (B.astype(np.float32) > 0.05).mean((1, 2)) >= 0.02
rec["filtered"] = {"dropped_empty_target_slices": int((~keep).sum()),
                   "rule": "T2 slice with < 2% of pixels above 0.05 (noise-only slice outside the head of a full-head render)",
                   "tool": "benchmarks/gan_data_v4.sh"}
np.savez_compressed(f"{d}/train128_v4b_tissuepeak.npz", A=A[keep], B=B[keep], source=src[keep], recipe=json.dumps(rec))
print(int(keep.sum()), "pairs kept,", int((~keep).sum()), "dropped")
PY
# 3. 400 unpaired real ceT1 slices with skull from tcia_vs (resampled to 1 mm first)
python3 -m MultimodalRegistrationLab.synth --out "$D/unpaired128_tcia_vs.npz" --n-synth 0 --real-cases \
    --seed 5 --normalisation tissue-peak --unpaired-cet1 ../shared/data/tcia_vs/VS-SEG-001_t1c_mprage.nii.gz \
    --slices-per-unpaired 400

#!/usr/bin/env bash
# Issue 12 lever ablation: evaluate one checkpoint on the held-out patients (TCGA-DU-7294, stroke) and on the
# with-skull session of training patient TCGA-FG-6692, exactly as docs/GAN.md's tables (1 CPU thread).
# usage: benchmarks/gan_ablation_eval.sh NAME CHECKPOINT.safetensors
#   -> benchmarks/results/gan_ablation_NAME/ and benchmarks/results/gan_ablation_NAME/withskull_fg6692/
set -euo pipefail
NAME=$1 CKPT=$2
export OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-MultimodalRegistration}
OUT=benchmarks/results/gan_ablation_$NAME
python3 -m MultimodalRegistrationLab.evaluate_gan --checkpoint "$CKPT" --cases TCGA-DU-7294 stroke \
    --out "$OUT" --progress none
python3 -m MultimodalRegistrationLab.evaluate_gan --checkpoint "$CKPT" --cases native:TCGA-FG-6692:withskull \
    --out "$OUT/withskull_fg6692" --progress none
